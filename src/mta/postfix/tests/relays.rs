//! Outgoing mail through a relayhost (STARTTLS or implicit TLS) and
//! [policies].

use super::*;

/// An inventory of one host at `DIR` with a relayhost and [policies].
fn smarthost_inventory(tls: &str, port: u16) -> Inventory {
    let pin = "AB:".repeat(31) + "AB";
    let text = format!(
        r#"
[hosts.relay]
ssh = "root@relay.example.org"
mx = "relay.example.org"
config_dir = "{DIR}"
relayhost = "isp"

[external.isp]
address = "mail.isp.example:{port}"
tls = "{tls}"
pins = ["{pin}"]

[policies]
"gmail.com" = "secure"
"plain.example" = "none"
"pinned.example" = ["{pin}"]
"#
    );
    inventory::parse(Path::new("mxpin.toml"), &text).unwrap()
}

#[test]
fn starttls_relayhost_and_policies_share_the_policy_table() {
    let inv = smarthost_inventory("starttls", 587);
    let f = fixture_facts(FRESH);
    let plan = plan_for(&inv, "relay", &f, &new_keys("home.example.net"));
    let pin = "AB:".repeat(31) + "AB";
    assert_eq!(
        table_of(&plan, DIR, "tls_policy"),
        pairs(&[
            (
                "[mail.isp.example]:587",
                &format!("fingerprint match={pin}")
            ),
            ("gmail.com", "secure"),
            ("pinned.example", &format!("fingerprint match={pin}")),
            ("plain.example", "none"),
        ])
    );
    let (removed, added) = main_cf_diff(&plan);
    assert_eq!(
        removed,
        ["relayhost = ", SNAKEOIL_LINES[0], SNAKEOIL_LINES[1]]
    );
    for line in [
        "relayhost = [mail.isp.example]:587",
        &format!("smtp_tls_policy_maps = hash:{}", owned(DIR, "tls_policy")),
        "smtp_tls_fingerprint_digest = sha256",
    ] {
        assert!(added.iter().any(|l| l == line), "{line} in {added:?}");
    }
    assert!(!added.iter().any(|l| l.starts_with("default_transport")));
    assert!(!added.iter().any(|l| l.starts_with("transport_maps")));
    assert!(
        plan.changes.iter().all(|c| !c.path.ends_with("master.cf")),
        "STARTTLS needs no master.cf service"
    );
    let lookups = &plan.steps.postfix().lookups;
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].key, "[mail.isp.example]:587");
    assert!(!lookups[0].wrapper);
    assert!(
        plan.notes.iter().any(|n| n
            == "warning: policy none for plain.example is weaker than this host's smtp_tls_security_level = may"),
        "{:?}",
        plan.notes
    );
    let after = simulate_apply(&f, &plan);
    assert_converged(&plan_for(&inv, "relay", &after, &new_keys("x.example")));
}

#[test]
fn implicit_tls_relayhost_gets_the_wrappermode_service() {
    let inv = smarthost_inventory("implicit", 465);
    let mut f = fixture_facts(FRESH);
    let plan = plan_for(&inv, "relay", &f, &new_keys("home.example.net"));
    let (_, added) = main_cf_diff(&plan);
    assert!(
        added.iter().any(|l| l == "default_transport = mxpin-smtps"),
        "{added:?}"
    );
    let master = change(&plan, &format!("{DIR}/master.cf"));
    let new = master.new.as_ref().unwrap().raw();
    let old = master.old.as_ref().unwrap().raw();
    assert!(new.starts_with(old), "only appended");
    assert!(
        new.ends_with("smtp\n  -o smtp_tls_wrappermode=yes\n"),
        "{new}"
    );
    assert!(plan.steps.postfix().lookups[0].wrapper);
    assert_eq!(plan.steps.postfix().master_cf_before.as_deref(), Some(old));
    let after = simulate_apply(&f, &plan);
    assert_converged(&plan_for(&inv, "relay", &after, &new_keys("x.example")));

    // Dropping the relayhost takes back what mxpin wrote, byte for byte.
    let plain = inventory::parse(
        Path::new("mxpin.toml"),
        &format!(
            "[hosts.relay]\nssh = \"r\"\nmx = \"relay.example.org\"\nconfig_dir = \"{DIR}\"\n"
        ),
    )
    .unwrap();
    let undo = plan_for(&plain, "relay", &after, &new_keys("x.example"));
    let undone = simulate_apply(&after, &undo);
    assert!(undone.main_cf.contains("\nrelayhost = \n"));
    for gone in ["default_transport", "smtp_tls_policy_maps"] {
        assert!(!undone.main_cf.contains(gone), "{gone}: {}", undone.main_cf);
    }
    assert_eq!(undone.master_cf, f.master_cf);
    assert!(!undone.files.contains_key("tls_policy"));

    // An admin's own default_transport is not taken over.
    f.main_cf.push_str("default_transport = uucp\n");
    let e = try_plan(&inv, "relay", &f, &new_keys("home.example.net")).unwrap_err();
    assert!(e.contains("default_transport is \"uucp\""), "{e}");

    // Without pins nothing is planned: mail would go out unauthenticated.
    let unpinned = inventory::parse(
        Path::new("mxpin.toml"),
        &format!(
            "[hosts.relay]\nssh = \"r\"\nmx = \"relay.example.org\"\nconfig_dir = \"{DIR}\"\nrelayhost = \"isp\"\n\
             [external.isp]\naddress = \"mail.isp.example:465\"\ntls = \"implicit\"\n"
        ),
    )
    .unwrap();
    let e = try_plan(
        &unpinned,
        "relay",
        &fixture_facts(FRESH),
        &new_keys("x.example"),
    )
    .unwrap_err();
    assert_eq!(
        e,
        "relayhost isp has no pins yet: run `mxpin pin isp` first"
    );
}
