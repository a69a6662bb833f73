//! Issue 16: a primary with `smtp_port = 26` gets an smtpd there (the
//! admin's port-25 one copied), noted, ordered before its backups, and
//! gives master.cf back byte for byte when the port goes back to 25.

use super::*;

/// Issue 16: a primary with `smtp_port = 26` gets an smtpd there (the
/// admin's port-25 one copied), noted, ordered before its backups, and
/// gives master.cf back byte for byte when the port goes back to 25.
#[test]
fn a_primary_on_another_port_opens_it_and_gives_master_cf_back() {
    let relay = new_keys("relay.example.org");
    let f = fixture_facts(FRESH);
    let admin = f.master_cf.clone().unwrap();
    let inv = inventory_with(DIR, DIR, 26, "relay.example.org", true);
    let plan = plan_for(&inv, "home", &f, &relay);
    assert!(plan.opens_listener && plan.goes_first());
    assert!(
        plan.notes
            .iter()
            .any(|n| n.starts_with("nothing listens on smtp_port 26: mxpin adds an smtpd")),
        "{:?}",
        plan.notes
    );
    let master = change(&plan, &format!("{DIR}/master.cf"));
    let new = master.new.as_ref().unwrap().raw();
    assert!(new.starts_with(&admin), "appended, nothing else changes");
    assert!(crate::mta::postfix::mastercf::smtp_listener_on(new, 26));
    assert!(new.contains("26      inet  n       -       y       -       -       smtpd\n"));

    // Applied: nothing more to do on the port, and no ordering any more.
    let after = simulate_apply(&f, &plan);
    let again = plan_for(&inv, "home", &after, &relay);
    assert!(!again.opens_listener);
    assert!(!again
        .changes
        .iter()
        .any(|c| c.path == format!("{DIR}/master.cf")));

    // Back to 25: the admin's master.cf byte for byte.
    let inv25 = inventory_with(DIR, DIR, 25, "relay.example.org", true);
    let back = plan_for(&inv25, "home", &after, &relay);
    let master = change(&back, &format!("{DIR}/master.cf"));
    assert_eq!(master.new.as_ref().unwrap().raw(), admin);
    assert!(!back.opens_listener);

    // The backup is not a primary: nothing opens there.
    let backup = plan_for(&inv, "relay", &f, &new_keys("home.example.net"));
    assert!(!backup.opens_listener);
    assert!(!backup
        .changes
        .iter()
        .any(|c| c.path == format!("{DIR}/master.cf")));
}

/// An admin's own service on smtp_port is used as it is.
#[test]
fn an_admins_service_on_smtp_port_is_used_as_it_is() {
    let relay = new_keys("relay.example.org");
    let mut f = fixture_facts(FRESH);
    let mine = format!(
        "{}26 inet n - y - - smtpd\n",
        f.master_cf.as_deref().unwrap()
    );
    f.master_cf = Some(mine);
    let inv = inventory_with(DIR, DIR, 26, "relay.example.org", true);
    let plan = plan_for(&inv, "home", &f, &relay);
    assert!(!plan.opens_listener);
    assert!(!plan.notes.iter().any(|n| n.contains("smtp_port 26")));
    assert!(!plan
        .changes
        .iter()
        .any(|c| c.path == format!("{DIR}/master.cf")));
}
