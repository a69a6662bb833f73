//! A pair of hosts relaying for each other: the client pins the relay and
//! presents its own key only on that path, the relay accepts only pinned
//! client keys, both rotate through a transitional pin; and an admin's own
//! certificate served beside mxpin's key by SNI.

use super::*;

/// home relays through vps, which backs up home's domain.
fn pair_inventory(extra_vps: &str) -> Inventory {
    let text = format!(
        r#"
[hosts.home]
ssh = "home"
mx = "home.example.net"
config_dir = "{DIR}"
relayhost = "vps"

[hosts.vps]
ssh = "vps"
mx = "vps.example.org"
config_dir = "{DIR}"
{extra_vps}

[domains."example.net"]
primary = "home"
backups = ["vps"]
recipients = ["first.last@example.net"]
"#
    );
    inventory::parse(Path::new("mxpin.toml"), &text).unwrap()
}

#[test]
fn the_client_pins_the_relay_and_presents_its_own_key_only_on_that_path() {
    let inv = pair_inventory("");
    let f = fixture_facts(FRESH);
    let vps_keys = new_keys("vps.example.org");
    let plan = plan_for(&inv, "home", &f, &vps_keys);
    let [cur, next] = pins(&vps_keys);
    assert_eq!(
        table_of(&plan, DIR, "tls_policy"),
        pairs(&[(
            "[vps.example.org]:2525",
            &format!("fingerprint match={cur}|{next}")
        )])
    );
    let (removed, added) = main_cf_diff(&plan);
    assert_eq!(
        removed,
        ["relayhost = ", SNAKEOIL_LINES[0], SNAKEOIL_LINES[1]]
    );
    for line in [
        "relayhost = [vps.example.org]:2525",
        "default_transport = mxpin-relay",
        "smtp_tls_fingerprint_digest = sha256",
    ] {
        assert!(added.iter().any(|l| l == line), "{line} in {added:?}");
    }
    let master = change(&plan, &format!("{DIR}/master.cf"));
    let new = master.new.as_ref().unwrap().raw();
    assert!(new.starts_with(master.old.as_ref().unwrap().raw()));
    assert!(
        new.ends_with(&format!(
            "mxpin-relay unix  -       -       y       -       -       smtp\n  \
             -o smtp_tls_chain_files={DIR}/mxpin/current.key,{DIR}/mxpin/current.crt\n"
        )),
        "{new}"
    );
    assert!(
        !added.iter().any(|l| l.starts_with("smtp_tls_chain_files")),
        "the client key is not handed to every server that asks"
    );
    let lookups = &plan.steps.postfix().lookups;
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].key, "[vps.example.org]:2525");
    assert!(!lookups[0].wrapper, "STARTTLS on the relay port");
    let edge = &plan.pinned[0];
    assert_eq!(
        (edge.pinned.as_str(), edge.purpose),
        ("vps", crate::trust::Purpose::Smarthost)
    );
    assert_eq!(edge.probe.as_deref(), Some("vps.example.org:2525"));
    let after = simulate_apply(&f, &plan);
    assert_converged(&plan_for(&inv, "home", &after, &vps_keys));

    // Dropping the relayhost gives the admin's files back.
    let plain = inventory::parse(
        Path::new("mxpin.toml"),
        &format!("[hosts.home]\nssh = \"h\"\nmx = \"home.example.net\"\nconfig_dir = \"{DIR}\"\n"),
    )
    .unwrap();
    let undone = simulate_apply(&after, &plan_for(&plain, "home", &after, &vps_keys));
    assert_eq!(undone.master_cf, f.master_cf);
    assert!(undone.main_cf.contains("\nrelayhost = \n"));
    assert!(!undone.main_cf.contains("default_transport"));

    // An admin's own default_transport is refused, with the fix.
    let mut own = fixture_facts(FRESH);
    own.main_cf.push_str("default_transport = uucp\n");
    let e = try_plan(&inv, "home", &own, &vps_keys).unwrap_err();
    assert_eq!(
        e,
        "relayhost vps needs its client certificate through mxpin's mxpin-relay transport, \
         but default_transport is \"uucp\"; set it back to smtp"
    );
}

#[test]
fn the_relay_listens_on_relay_port_and_relays_only_for_pinned_client_keys() {
    let inv = pair_inventory("relay_port = 2626");
    let f = fixture_facts(FRESH);
    let home_keys = new_keys("home.example.net");
    let plan = plan_for(&inv, "vps", &f, &home_keys);
    let [cur, next] = pins(&home_keys);
    assert_eq!(
        table_of(&plan, DIR, "relay_clientcerts"),
        pairs(&[
            (&cur, "INFO pinned client key of home (mxpin)"),
            (&next, "INFO pinned client key of home (mxpin)")
        ])
    );
    assert!(
        cur.contains(':'),
        "Postfix matches client keys with colons only"
    );
    let master = change(&plan, &format!("{DIR}/master.cf"));
    let new = master.new.as_ref().unwrap().raw();
    let old = master.old.as_ref().unwrap().raw();
    assert!(
        new.starts_with(old),
        "the admin's services stay as they are"
    );
    let block = &new[old.len()..];
    for line in [
        "2626      inet  n       -       y       -       -       smtpd",
        "  -o smtpd_tls_security_level=encrypt",
        "  -o smtpd_tls_ask_ccert=yes",
        "  -o smtpd_tls_fingerprint_digest=sha256",
        &format!("  -o relay_clientcerts=hash:{DIR}/mxpin/relay_clientcerts"),
        &format!(
            "  -o smtpd_relay_restrictions=check_ccert_access,hash:{DIR}/mxpin/relay_clientcerts,\
             permit_tls_clientcerts,defer"
        ),
    ] {
        assert!(block.lines().any(|l| l == line), "{line} in\n{block}");
    }
    let lookups = &plan.steps.postfix().lookups;
    assert!(lookups.iter().any(|l| l.table == "relay_clientcerts"
        && l.key == cur
        && l.expected == "INFO pinned client key of home (mxpin)"));
    assert!(plan
        .steps
        .postfix()
        .postmap
        .contains(&owned(DIR, "relay_clientcerts")));
    let after = simulate_apply(&f, &plan);
    assert_converged(&plan_for(&inv, "vps", &after, &home_keys));
    assert_eq!(
        after.pins_for(&crate::trust::PinSite::ClientCerts),
        [cur.clone(), next.clone()]
    );

    // A port another service already has is refused, naming it.
    let mut taken = fixture_facts(FRESH);
    let text = taken.master_cf.as_mut().unwrap();
    text.push_str("2626 inet n - y - - smtpd\n");
    let e = try_plan(&inv, "vps", &taken, &home_keys).unwrap_err();
    assert_eq!(
        e,
        "relay_port 2626 is already used by master.cf's `2626 inet n - y - - smtpd`; \
         set relay_port to a free port"
    );
}

/// The pair's fleet state after `facts` per host (home, vps).
fn pair_states(inv: &Inventory, facts: &[PostfixFacts; 2]) -> Vec<engine::HostState> {
    inv.hosts
        .iter()
        .zip(facts)
        .map(|(h, f)| engine::HostState {
            lock: None,
            host: h.clone(),
            conn: None,
            stale: false,
            probes: Vec::new(),
            facts: Ok(crate::mta::Facts::Postfix(f.clone())),
        })
        .collect()
}

/// Applies every plan of a fleet plan to the facts it was made from.
fn apply_fleet(fleet: &engine::FleetPlan, facts: &[PostfixFacts; 2]) -> [PostfixFacts; 2] {
    let plan = |i: usize| match &fleet.outcomes[i] {
        HostOutcome::Planned(p) => simulate_apply(&facts[i], p),
        HostOutcome::Failed(error) => panic!("{error}"),
    };
    [plan(0), plan(1)]
}

#[test]
fn the_pair_rotates_both_ways_through_a_transitional_pin_and_the_rule_reads_every_edge() {
    let inv = pair_inventory("");
    let t = Templates::load(None).unwrap();
    let idle = engine::Rotation::default();
    let fresh = [fixture_facts(FRESH), fixture_facts(FRESH)];
    let boot = engine::plan_all(&inv, &pair_states(&inv, &fresh), &[], &t, now(), &idle);
    // home does not send through vps before vps accepts its key.
    let home = planned(&boot, "home");
    assert!(home.transitional);
    assert!(home.pinned.is_empty(), "{:?}", home.pinned);
    assert!(!main_cf_diff(home)
        .1
        .iter()
        .any(|l| l.starts_with("relayhost")));
    let booted = apply_fleet(&boot, &fresh);
    let second = engine::plan_all(&inv, &pair_states(&inv, &booted), &[], &t, now(), &idle);
    let home = planned(&second, "home");
    assert!(!home.transitional);
    assert!(main_cf_diff(home)
        .1
        .contains(&"relayhost = [vps.example.org]:2525".to_string()));
    assert!(planned(&second, "vps").is_empty());
    let applied = apply_fleet(&second, &booted);
    let again = engine::plan_all(&inv, &pair_states(&inv, &applied), &[], &t, now(), &idle);
    for o in &again.outcomes {
        assert!(
            matches!(o, HostOutcome::Planned(p) if p.is_empty()),
            "{o:?}"
        );
    }

    // Both rotate: each pins the other, a cycle, so each keeps the key the
    // other served before for this one run.
    let both = engine::Rotation {
        hosts: ["home", "vps"]
            .iter()
            .map(|h| inventory::HostName::parse(h).unwrap())
            .collect(),
        compromised: false,
        ..Default::default()
    };
    let states = pair_states(&inv, &applied);
    let f = engine::plan_all(&inv, &states, &[], &t, now(), &both);
    assert!(f.refused.is_empty(), "{:?}", f.refused);
    assert_eq!(f.rotated.len(), 2);
    let (home, vps) = (planned(&f, "home"), planned(&f, "vps"));
    assert!(home.transitional && vps.transitional);
    let old_vps = &f.rotated[1].old_current;
    let home_policy = table_of(home, DIR, "tls_policy");
    assert!(
        home_policy[0].1.ends_with(&format!("|{old_vps}")),
        "home still accepts vps's old key: {home_policy:?}"
    );
    let old_home = &f.rotated[0].old_current;
    let clients = table_of(vps, DIR, "relay_clientcerts");
    assert_eq!(clients.len(), 3);
    assert!(clients.iter().any(|(k, _)| k == old_home.as_str()));

    // The second round drops the old keys, and then nothing is left.
    let rotated = apply_fleet(&f, &applied);
    let second = engine::plan_all(&inv, &pair_states(&inv, &rotated), &[], &t, now(), &idle);
    for host in ["home", "vps"] {
        let p = planned(&second, host);
        assert!(!p.transitional && !p.switches_key, "{host}");
        let mut changed = changed_paths(p);
        changed.retain(|c| c != "tls_policy" && c != "relay_clientcerts");
        assert!(changed.is_empty(), "{host}: only pins change: {changed:?}");
    }
    let done = apply_fleet(&second, &rotated);
    let last = engine::plan_all(&inv, &pair_states(&inv, &done), &[], &t, now(), &idle);
    for o in &last.outcomes {
        assert!(
            matches!(o, HostOutcome::Planned(p) if p.is_empty()),
            "{o:?}"
        );
    }

    // A relay whose client table lags refuses home's rotation, naming why;
    // home alone needs no transitional pin.
    let mut lagging = done.clone();
    let found = lagging[1].files.get_mut("relay_clientcerts").unwrap();
    let first_line_only: String = found
        .content
        .raw()
        .lines()
        .filter(|l| !l.starts_with(|c: char| c.is_ascii_hexdigit()))
        .chain(
            found
                .content
                .raw()
                .lines()
                .find(|l| l.starts_with(|c: char| c.is_ascii_hexdigit())),
        )
        .map(|l| format!("{l}\n"))
        .collect();
    found.content = Content::Text(first_line_only);
    let home_only = engine::Rotation {
        hosts: [inventory::HostName::parse("home").unwrap()].into(),
        compromised: false,
        ..Default::default()
    };
    let f = engine::plan_all(
        &inv,
        &pair_states(&inv, &lagging),
        &[],
        &t,
        now(),
        &home_only,
    );
    assert_eq!(
        f.refused[0].message,
        "rotation refused: peer vps does not pin home's next key yet as its client certificate; \
         run `mxpin apply` first"
    );
    let f = engine::plan_all(&inv, &pair_states(&inv, &done), &[], &t, now(), &home_only);
    assert!(f.refused.is_empty());
    let (home, vps) = (planned(&f, "home"), planned(&f, "vps"));
    assert!(!home.transitional && !vps.transitional);
    assert_eq!(
        engine::waves(&[home, vps]),
        [0, 1],
        "vps re-pins after the switch"
    );
}

#[test]
fn an_admins_own_certificate_stays_and_peers_get_the_pin_by_sni() {
    let inv = inventory(DIR, false);
    let mut f = fixture_facts(FRESH);
    // certbot's way: a full chain and a key of the admin's.
    let admin = tls::generate(KeyAlgorithm::EcdsaP256, "home.example.net", 90, now()).unwrap();
    let live = "/etc/letsencrypt/live/home.example.net";
    f.main_cf = f.main_cf.replace(
        "smtpd_tls_cert_file=/etc/ssl/certs/ssl-cert-snakeoil.pem\nsmtpd_tls_key_file=/etc/ssl/private/ssl-cert-snakeoil.key\n",
        &format!("smtpd_tls_cert_file={live}/fullchain.pem\nsmtpd_tls_key_file={live}/privkey.pem\n"),
    );
    f.effective.insert(
        "smtpd_tls_cert_file".into(),
        format!("{live}/fullchain.pem"),
    );
    f.served_certs
        .insert("smtpd_tls_cert_file".into(), admin.cert.pem().to_string());
    let plan = plan_for(&inv, "home", &f, &new_keys("relay.example.org"));
    let (removed, added) = main_cf_diff(&plan);
    assert!(removed.is_empty(), "the admin's lines stay: {removed:?}");
    assert_eq!(
        added,
        [format!("tls_server_sni_maps = texthash:{DIR}/mxpin/sni")],
        "no smtpd_tls_chain_files over the admin's certificate"
    );
    let sni = change(&plan, &format!("{DIR}/mxpin/sni"));
    assert!(sni.new.as_ref().unwrap().raw().ends_with(&format!(
        "\nmxpin.invalid\t{DIR}/mxpin/current.key, {DIR}/mxpin/current.crt\n"
    )));
    assert!(plan.switches_key, "its peers wait for the SNI map");
    let note = plan
        .notes
        .iter()
        .find(|n| n.starts_with("keeps the admin's certificate"))
        .expect("plan names the certificate");
    assert!(
        note.contains(&format!("smtpd_tls_cert_file = {live}/fullchain.pem"))
            && note.contains("CN=home.example.net")
            && note.contains("mxpin.invalid"),
        "{note}"
    );
    let after = simulate_apply(&f, &plan);
    assert_converged(&plan_for(&inv, "home", &after, &new_keys("x.example")));

    // An earlier mxpin's smtpd_tls_chain_files over the admin's
    // certificate is given back.
    let mut old = after.clone();
    old.main_cf.push_str(&format!(
        "smtpd_tls_chain_files = {DIR}/mxpin/current.key, {DIR}/mxpin/current.crt\n"
    ));
    old.effective.insert(
        "smtpd_tls_chain_files".into(),
        format!("{DIR}/mxpin/current.key, {DIR}/mxpin/current.crt"),
    );
    let plan = plan_for(&inv, "home", &old, &new_keys("x.example"));
    assert_eq!(main_cf_diff(&plan).0.len(), 1, "{:?}", main_cf_diff(&plan));
    assert!(main_cf_diff(&plan).0[0].starts_with("smtpd_tls_chain_files"));

    // When the admin's certificate goes, mxpin's key is served to all and
    // the SNI table goes.
    let gone = plan_for(&inv, "home", &fixture_facts(FRESH), &new_keys("x.example"));
    assert!(main_cf_diff(&gone)
        .1
        .iter()
        .any(|l| l.starts_with("smtpd_tls_chain_files")));
    assert!(!gone.changes.iter().any(|c| c.path.ends_with("/sni")));

    // Backups ask for the pin by name, and posttls-finger does too.
    let relay = plan_for(
        &inventory(DIR, true),
        "relay",
        &fixture_facts(FRESH),
        &new_keys("home.example.net"),
    );
    let policy = &table_of(&relay, DIR, "tls_policy")[0].1;
    assert!(
        policy.starts_with("fingerprint servername=mxpin.invalid match="),
        "{policy}"
    );
    let snippet = crate::mta::postfix::verify_snippet(relay.steps.postfix(), "sha256", "dns");
    assert!(
        snippet.contains("posttls-finger -c -s 'mxpin.invalid' -l fingerprint"),
        "{snippet}"
    );
}
