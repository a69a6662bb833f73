//! The fleet: `engine::plan_all` over both fixture hosts (no connections):
//! rotations, their ordering and refusals, renewals, and the DNS pinner.

use super::*;

#[test]
fn fleet_rotation_switches_home_first_then_repins_relay() {
    let (inv, states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
    let t = Templates::load(None).unwrap();
    let idle = engine::plan_all(&inv, &states, &[], &t, now(), &engine::Rotation::default());
    assert!(idle
        .outcomes
        .iter()
        .all(|o| matches!(o, HostOutcome::Planned(p) if p.is_empty())));

    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(false));
    assert!(f.refused.is_empty(), "{:?}", f.refused);
    assert_eq!(f.rotated.len(), 1);
    let home_next =
        Certificate::from_pem(fixture_facts(HOME_APPLIED).files["next.crt"].content.raw()).unwrap();
    let r = &f.rotated[0];
    assert_eq!(
        r.new_current,
        home_next.fingerprint(Digest::Sha256, PinKind::PublicKey)
    );
    assert_ne!(r.new_next, r.new_current);

    let home = planned(&f, "home");
    let relay = planned(&f, "relay");
    assert!(home.switches_key);
    assert_eq!(
        sorted(&["current.crt", "current.key", "next.crt", "next.key"]),
        {
            let mut v = changed_paths(home);
            v.sort();
            v
        }
    );
    assert_eq!(
        changed_paths(relay),
        ["tls_policy"],
        "the peer only re-pins"
    );
    let policy = table_of(relay, &fixture_dir("relay"), "tls_policy");
    assert_eq!(
        policy[0].1,
        format!(
            "fingerprint servername=mxpin.invalid match={}|{}",
            r.new_current, r.new_next
        ),
        "new current first, then the fresh next"
    );
    assert_eq!(
        engine::waves(&[home, relay]),
        [0, 1],
        "home switches before relay re-pins"
    );
}

#[test]
fn fleet_rotation_is_refused_when_a_peer_lags_or_cannot_be_read() {
    let t = Templates::load(None).unwrap();
    // relay pins only home's current key: it does not trust home's next.
    let mut lagging = fixture_facts(RELAY_APPLIED);
    let found = lagging.files.get_mut("tls_policy").unwrap();
    let text = found.content.raw().to_string();
    let cut: String = text
        .lines()
        .map(|l| match l.split_once('|') {
            Some((head, _)) if l.starts_with("[home.example.net]") => format!("{head}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    found.content = Content::Text(cut);
    let (inv, states) = fleet(Ok(lagging));
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(false));
    assert!(f.rotated.is_empty());
    assert_eq!(f.refused.len(), 1);
    assert_eq!(
        f.refused[0].message,
        "rotation refused: peer relay does not pin home's next key yet; run `mxpin apply` first"
    );
    assert!(
        !planned(&f, "home").switches_key,
        "home keeps serving its key"
    );

    let (inv, states) = fleet(Err("ssh relay: connection refused".into()));
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(false));
    assert!(
        f.refused[0].message.contains("peer relay cannot be read"),
        "{:?}",
        f.refused
    );
    // An emergency rotation goes on: the old key must stop being trusted
    // wherever mxpin can reach.
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &rotate_home(true));
    assert!(f.refused.is_empty());
    assert_eq!(f.rotated.len(), 1);
    assert!(planned(&f, "home").switches_key);
}

#[test]
fn renewal_with_public_key_pins_changes_no_peer() {
    let (inv, states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
    let t = Templates::load(None).unwrap();
    // 20 days before the fixtures' certificates expire (825 days of validity).
    let late = now() + time::Duration::days(805);
    let f = engine::plan_all(&inv, &states, &[], &t, late, &engine::Rotation::default());
    assert!(f.rotated.is_empty() && f.refused.is_empty());
    let home = planned(&f, "home");
    let mut paths = changed_paths(home);
    paths.sort();
    assert_eq!(
        paths,
        ["current.crt", "next.crt"],
        "same keys, new certificates"
    );
    assert!(home
        .notes
        .iter()
        .any(|n| n
            == "current certificate re-issued for the same key: certificate expires in 20 days"));
    assert!(
        !changed_paths(planned(&f, "relay")).contains(&"tls_policy".to_string()),
        "peers keep their pins"
    );
}

/// Issue 13: the DNS pinner holds a host's switch, asked for or due to a
/// renewal under certificate pins, with its reason; nothing rotates.
#[test]
fn the_dns_pinner_holds_a_switch_asked_for_or_due_to_a_renewal() {
    let (mut inv, states) = fleet(Ok(fixture_facts(RELAY_APPLIED)));
    let t = Templates::load(None).unwrap();
    let home = inventory::HostName::parse("home").unwrap();
    let why = "the resolver 127.0.0.54:53 does not return the next key's record yet".to_string();
    let mut asked = rotate_home(false);
    asked.held_by_dns.insert(home.clone(), why.clone());
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &asked);
    assert!(f.rotated.is_empty(), "{:?}", f.rotated);
    assert_eq!(
        f.refused.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        [format!("home: rotation refused: {why}")]
    );

    // Home's current certificate within renew_days, certificate pins: a
    // renewal would rotate it, and DNS holds that too.
    inv.settings.pin = PinKind::Certificate;
    let current = Certificate::from_pem(
        fixture_facts(HOME_APPLIED).files["current.crt"]
            .content
            .raw(),
    )
    .unwrap();
    let late = OffsetDateTime::from_unix_timestamp(current.not_after() - 86_400).unwrap();
    let mut renewal = engine::Rotation::default();
    renewal.held_by_dns.insert(home, why.clone());
    let f = engine::plan_all(&inv, &states, &[], &t, late, &renewal);
    assert!(
        f.refused.iter().any(|e| e.to_string()
            == format!("home: certificate renewal (certificate pins) refused: {why}")),
        "{:?}",
        f.refused
    );
    assert!(!f.rotated.iter().any(|r| r.host.as_str() == "home"));
}
