//! Issue 15: a plan that is only shown generates no key and says
//! `(new key: known after apply)` where a new key's fingerprint would be;
//! a plan that will be applied gets real keys, of the inventory's type.

use super::*;
use crate::keys::{self, Use, CERTIFICATE_AFTER_APPLY, KNOWN_AFTER_APPLY};

/// Both fixture hosts as first read: no keys on either.
fn fresh_fleet(alg: KeyAlgorithm) -> (Inventory, Vec<engine::HostState>) {
    let mut inv = inventory_with(DIR, DIR, 25, "relay.example.org", true);
    inv.settings.key = alg;
    let states = inv
        .hosts
        .iter()
        .map(|h| engine::HostState {
            lock: None,
            host: h.clone(),
            conn: None,
            stale: false,
            probes: Vec::new(),
            facts: Ok(crate::mta::Facts::Postfix(fixture_facts(FRESH))),
        })
        .collect();
    (inv, states)
}

fn plan_fleet(
    inv: &Inventory,
    states: &[engine::HostState],
    rotation: &engine::Rotation,
    usage: Use,
) -> engine::FleetPlan {
    let t = Templates::load(None).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(keys::plan_fleet(
            inv,
            states,
            &[],
            &t,
            now(),
            rotation,
            usage,
        ))
}

/// `FILE` in mxpin's directory on `host`.
fn owned(inv: &Inventory, host: &str, file: &str) -> String {
    let h = inv.host(&inventory::HostName::parse(host).unwrap());
    format!("{}/mxpin/{file}", h.config_dir.as_str())
}

fn new_text(plan: &HostPlan, path: &str) -> String {
    change(plan, path).new.as_ref().unwrap().raw().to_string()
}

#[test]
fn a_dry_run_shows_new_keys_as_known_after_apply() {
    let (inv, states) = fresh_fleet(KeyAlgorithm::Rsa4096);
    let fleet = plan_fleet(&inv, &states, &engine::Rotation::default(), Use::Show);
    let home = planned(&fleet, "home");
    let relay = planned(&fleet, "relay");
    for p in [home, relay] {
        for slot in ["current", "next"] {
            assert_eq!(
                new_text(p, &format!("{DIR}/mxpin/{slot}.crt")),
                format!("{CERTIFICATE_AFTER_APPLY}\n"),
                "{}",
                p.host
            );
            assert!(change(p, &format!("{DIR}/mxpin/{slot}.key")).is_secret());
        }
        let shown = render_host(p, crate::plan::PinStyle::SHA256_KEY);
        assert!(!shown.contains("BEGIN CERTIFICATE"), "{shown}");
    }
    // The relay pins home's two new keys: both unknown until apply.
    let policy = new_text(relay, &format!("{DIR}/mxpin/tls_policy"));
    assert!(
        policy.contains(&format!("match={KNOWN_AFTER_APPLY}|{KNOWN_AFTER_APPLY}")),
        "{policy}"
    );
    let hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
    assert!(
        !policy.as_bytes().windows(5).any(|w| hex(&w[0])
            && hex(&w[1])
            && w[2] == b':'
            && hex(&w[3])
            && hex(&w[4])),
        "no fingerprint of a placeholder is shown: {policy}"
    );
    // The plan is still the plan apply makes: every file, in the same order.
    let (inv, states) = fresh_fleet(KeyAlgorithm::EcdsaP256);
    let real = plan_fleet(&inv, &states, &engine::Rotation::default(), Use::Apply);
    for host in ["home", "relay"] {
        assert_eq!(
            changed_paths(planned(&fleet, host)),
            changed_paths(planned(&real, host))
        );
    }
}

#[test]
fn a_plan_to_apply_gets_real_distinct_keys_of_the_inventorys_type() {
    let (inv, states) = fresh_fleet(KeyAlgorithm::Rsa2048);
    let fleet = plan_fleet(&inv, &states, &engine::Rotation::default(), Use::Apply);
    let mut seen = BTreeSet::new();
    for host in ["home", "relay"] {
        let p = planned(&fleet, host);
        for slot in ["current", "next"] {
            let cert = Certificate::from_pem(&new_text(p, &format!("{DIR}/mxpin/{slot}.crt")))
                .expect("a real certificate");
            let key = match &change(p, &format!("{DIR}/mxpin/{slot}.key")).new {
                Some(Content::Secret(k)) => k.clone(),
                other => panic!("{other:?}"),
            };
            assert!(tls::key_matches(&key, &cert).unwrap());
            assert_eq!(cert.details().key, "RSA 2048");
            assert!(seen.insert(cert.fingerprint(Digest::Sha256, PinKind::PublicKey)));
        }
        assert!(!render_host(p, crate::plan::PinStyle::SHA256_KEY).contains(KNOWN_AFTER_APPLY));
    }
    // What the relay pins is what home will serve and stage.
    let home = planned(&fleet, "home");
    let pin = |slot: &str| {
        Certificate::from_pem(&new_text(home, &format!("{DIR}/mxpin/{slot}.crt")))
            .unwrap()
            .fingerprint(inv.settings.digest, inv.settings.pin)
    };
    let policy = new_text(planned(&fleet, "relay"), &format!("{DIR}/mxpin/tls_policy"));
    assert!(
        policy.contains(&format!("match={}|{}", pin("current"), pin("next"))),
        "{policy}"
    );
}

#[test]
fn a_rotation_dry_run_shows_the_staged_key_and_an_unknown_new_next() {
    let (inv, states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
    let rotation = engine::Rotation {
        hosts: [inventory::HostName::parse("home").unwrap()].into(),
        compromised: false,
        ..Default::default()
    };
    let dry = plan_fleet(&inv, &states, &rotation, Use::Show);
    assert_eq!(dry.rotated.len(), 1, "{:?}", dry.refused);
    let r = &dry.rotated[0];
    assert_eq!(r.new_next.as_str(), KNOWN_AFTER_APPLY);
    assert_ne!(r.new_current.as_str(), KNOWN_AFTER_APPLY);
    let policy = new_text(planned(&dry, "relay"), &owned(&inv, "relay", "tls_policy"));
    assert!(
        policy.contains(&format!("match={}|{KNOWN_AFTER_APPLY}", r.new_current)),
        "{policy}"
    );
    let real = plan_fleet(&inv, &states, &rotation, Use::Apply);
    assert_eq!(real.rotated[0].new_current, r.new_current);
    assert_ne!(real.rotated[0].new_next.as_str(), KNOWN_AFTER_APPLY);
}
