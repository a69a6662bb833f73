//! Tests of desired state: keys kept, generated, promoted and re-issued,
//! and the pins each host keeps.

use super::*;
use crate::inventory;
use std::path::Path;
use time::Duration;

fn inv() -> Inventory {
    inventory::parse(
        Path::new("t.toml"),
        r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"
[hosts.relay]
ssh = "relay"
mx = "relay.example.org"
smtp_port = 2525
[domains."example.net"]
primary = "home"
backups = ["relay"]
"#,
    )
    .unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap()
}

fn stored(id: &Identity) -> StoredPair {
    StoredPair {
        key: Some(id.key.clone()),
        cert: Some(id.cert.pem().to_string()),
    }
}

#[test]
fn empty_host_gets_two_distinct_fresh_keys() {
    let inv = inv();
    let k = resolve_keys(&inv, &inv.hosts[0], &StoredKeys::default(), now()).unwrap();
    assert_eq!(k.current.origin, Origin::Generated);
    assert_eq!(k.next.origin, Origin::Generated);
    let pins = k.pins(&inv);
    assert_ne!(pins[0], pins[1]);
}

#[test]
fn sound_keys_are_kept_and_wrong_certificates_reissued_for_the_same_key() {
    let inv = inv();
    let home = &inv.hosts[0];
    let good = tls::generate(inv.settings.key, "home.example.net", 90, now()).unwrap();
    let wrong_name = tls::generate(inv.settings.key, "old.example.net", 90, now()).unwrap();
    let stored = StoredKeys {
        current: stored(&good),
        next: stored(&wrong_name),
    };
    let k = resolve_keys(&inv, home, &stored, now()).unwrap();
    assert_eq!(k.current.origin, Origin::Kept);
    assert_eq!(k.current.identity.cert, good.cert);
    assert!(matches!(k.next.origin, Origin::Reissued(ref r) if r.contains("does not name")));
    assert_eq!(k.next.identity.key, wrong_name.key);
    assert_eq!(
        k.next
            .identity
            .cert
            .fingerprint(inv.settings.digest, inv.settings.pin),
        wrong_name
            .cert
            .fingerprint(inv.settings.digest, inv.settings.pin),
        "public-key pin survives the reissue"
    );

    let later = now() + Duration::days(91);
    let k = resolve_keys(&inv, home, &stored, later).unwrap();
    assert_eq!(
        k.current.origin,
        Origin::Reissued("certificate expired".into())
    );
}

fn inv_with(settings: &str) -> Inventory {
    let text = format!(
        "[settings]\n{settings}\n[hosts.home]\nssh = \"home\"\nmx = \"home.example.net\"\n"
    );
    inventory::parse(Path::new("t.toml"), &text).unwrap()
}

fn stored_valid_for(days: u32) -> StoredKeys {
    let id = |d| tls::generate(tls::KeyAlgorithm::EcdsaP256, "home.example.net", d, now()).unwrap();
    StoredKeys {
        current: stored(&id(days)),
        next: stored(&id(days)),
    }
}

#[test]
fn public_key_pins_renew_in_place_before_expiry() {
    let inv = inv_with("pin = \"public-key\"\nrenew_days = 30");
    let stored = stored_valid_for(40);
    let later = now() + Duration::days(20);
    let k = resolve_keys(&inv, &inv.hosts[0], &stored, later).unwrap();
    assert_eq!(
        k.current.origin,
        Origin::Reissued("certificate expires in 20 days".into())
    );
    assert!(!k.renewal_due);
    let before = Certificate::from_pem(stored.current.cert.as_deref().unwrap()).unwrap();
    assert_eq!(
        k.current
            .identity
            .cert
            .fingerprint(inv.settings.digest, inv.settings.pin),
        before.fingerprint(inv.settings.digest, inv.settings.pin),
        "peers' pins stay valid"
    );
    assert!(k.current.identity.cert.not_after() > later.unix_timestamp() + 800 * 86_400);
    let early = resolve_keys(&inv, &inv.hosts[0], &stored, now()).unwrap();
    assert_eq!(
        early.current.origin,
        Origin::Kept,
        "not yet within renew_days"
    );
}

#[test]
fn certificate_pins_turn_renewal_of_the_served_key_into_a_rotation() {
    let inv = inv_with("pin = \"certificate\"\nrenew_days = 30");
    let stored = stored_valid_for(40);
    let k = resolve_keys(&inv, &inv.hosts[0], &stored, now() + Duration::days(20)).unwrap();
    assert_eq!(
        k.current.origin,
        Origin::Kept,
        "a new certificate would break the pins"
    );
    assert!(k.renewal_due);
    assert!(
        matches!(k.next.origin, Origin::Reissued(_)),
        "the next key is not served yet"
    );
}

#[test]
fn rotation_promotes_next_and_stages_a_fresh_key() {
    for pin in ["public-key", "certificate"] {
        let inv = inv_with(&format!("pin = \"{pin}\""));
        let k = resolve_keys(&inv, &inv.hosts[0], &stored_valid_for(400), now()).unwrap();
        let r = rotate(&inv, &inv.hosts[0], &k, now()).unwrap();
        assert_eq!(r.current.identity.key, k.next.identity.key, "{pin}");
        assert_eq!(r.current.origin, Origin::Promoted);
        let pins_before = k.pins(&inv);
        let pins_after = r.pins(&inv);
        assert_eq!(
            pins_after[0], pins_before[1],
            "{pin}: the new current is what peers pinned as next"
        );
        assert!(
            !pins_before.contains(&pins_after[1]),
            "{pin}: fresh next key"
        );
        assert_ne!(r.next.identity.key, k.current.identity.key);
    }
}

#[test]
fn unreadable_key_is_an_error_not_a_silent_replacement() {
    let inv = inv();
    let stored = StoredKeys {
        current: StoredPair {
            key: Some(SecretPem::new("garbage".into())),
            cert: None,
        },
        next: StoredPair::default(),
    };
    let e = resolve_keys(&inv, &inv.hosts[0], &stored, now()).unwrap_err();
    assert!(e.to_string().starts_with("home: current key:"), "{e}");
}

#[test]
fn backups_route_to_the_primary_next_hop_with_its_pins() {
    let inv = inv();
    let keys: Vec<Result<HostKeys, String>> = inv
        .hosts
        .iter()
        .map(|h| Ok(resolve_keys(&inv, h, &StoredKeys::default(), now()).unwrap()))
        .collect();
    let home_pins = keys[0].as_ref().unwrap().pins(&inv);
    let d: Vec<HostDesired> = desired(&inv, keys, &Default::default(), &[])
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(d[0].routes.is_empty() && d[0].relays.is_empty());
    assert_eq!(d[1].routes.len(), 1);
    assert_eq!(d[1].routes[0].next_hop, "[home.example.net]:25");
    assert_eq!(d[1].routes[0].pins, home_pins);
    assert_eq!(d[1].relays[0].recipients, None);
}

#[test]
fn backup_of_an_unreadable_primary_is_not_planned() {
    let inv = inv();
    let relay_keys = resolve_keys(&inv, &inv.hosts[1], &StoredKeys::default(), now()).unwrap();
    let d = desired(
        &inv,
        vec![Err("home: unreachable".into()), Ok(relay_keys)],
        &Default::default(),
        &[],
    );
    assert_eq!(d[0].as_ref().unwrap_err(), "home: unreachable");
    let e = d[1].as_ref().unwrap_err();
    assert!(e.contains("whose keys could not be read"), "{e}");
    assert!(e.contains("it backs up example.net for home"), "{e}");
}
