//! Issue 15: the memo of postconf's answer ([`crate::mta::postfix::memo`]):
//! its key, its reading, and the facts of a real Postfix configuration
//! taking it only while its key holds.

use super::*;
use crate::mta::postfix::memo;
use std::os::unix::fs::PermissionsExt as _;

/// The shell that sets what the memo's functions need, then `body`.
fn with_memo_shell(conf: &str, body: &str) -> String {
    format!(
        "C={c}\nM=\"$C/mxpin\"\nNL='\n'\nPATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/sbin:/usr/local/bin:$PATH\n{shell}{body}",
        c = quote(conf),
        shell = memo::shell(),
    )
}

/// `pc_key` run on `listing` with postconf at `/usr/sbin/postconf`: the
/// key, or `None` when the listing gives none.
fn key_of(listing: &str) -> Option<String> {
    let body = format!(
        "pc_bin=/usr/sbin/postconf\npf_ls={}\nif pc_key; then printf '%s' \"$pk\"; else printf NOKEY; fi\n",
        quote(listing)
    );
    let out = run_sh_s(&with_memo_shell("/etc/postfix", &body));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    (text != "NOKEY").then_some(text)
}

const LISTING: &str = "\
-rw-r--r-- 1 0 0   1986 1796554064.136552257 /etc/postfix/main.cf
-rw-r--r-- 1 0 0   6959 1796554056.589603339 /etc/postfix/master.cf
-rw------- 1 0 0    241 1796554064.136552257 /etc/postfix/mxpin/current.key
-rwxr-xr-x 2 0 0 196328 1796546967.768542621 /usr/sbin/postconf";

#[test]
fn the_memo_key_is_the_ctime_lines_of_main_cf_master_cf_and_postconf() {
    // The facts list their files as the apply script lists the key's.
    assert!(crate::facts::SHELL_HELPERS.contains(memo::LS_CTIME));
    let key = key_of(LISTING).expect("a key");
    let lines: Vec<&str> = key.lines().collect();
    assert_eq!(lines.len(), 5, "{key}");
    assert!(lines[0].starts_with("mxpin postconf memo 1: mail_version "));
    assert!(lines[0].ends_with(&memo::params().join(" ")));
    assert!(lines[1].starts_with("host "));
    assert_eq!(
        &lines[2..],
        [
            "-rw-r--r-- 1 0 0 1986 1796554064.136552257 /etc/postfix/main.cf",
            "-rw-r--r-- 1 0 0 6959 1796554056.589603339 /etc/postfix/master.cf",
            "-rwxr-xr-x 2 0 0 196328 1796546967.768542621 /usr/sbin/postconf",
        ]
    );
    // ls pads its columns to the widest line of the listing: the key does
    // not depend on what else was listed.
    let alone = "\
-rw-r--r-- 1 0 0 1986 1796554064.136552257 /etc/postfix/main.cf
-rw-r--r-- 1 0 0 6959 1796554056.589603339 /etc/postfix/master.cf
-rwxr-xr-x 2 0 0 196328 1796546967.768542621 /usr/sbin/postconf";
    assert_eq!(key_of(alone).as_deref(), Some(key.as_str()));
    // Any other change time, size or mode is another key.
    for (from, to) in [
        (
            "1796554064.136552257 /etc/postfix/main.cf",
            "1796554064.136552258 /etc/postfix/main.cf",
        ),
        ("6959 ", "6960 "),
        ("-rwxr-xr-x 2", "-rwxr-x--- 2"),
    ] {
        let other = key_of(&LISTING.replacen(from, to, 1)).expect("a key");
        assert_ne!(other, key, "{to}");
    }
}

#[test]
fn no_memo_key_without_nanoseconds_or_a_regular_file() {
    for listing in [
        // A file system that keeps whole seconds.
        LISTING.replace("1796554056.589603339", "1796554056.000000000"),
        // ls without GNU's time style: no change time to the nanosecond.
        LISTING.replace("1796554056.589603339", "Dec  6 10:47"),
        // No master.cf.
        LISTING.replace("/etc/postfix/master.cf", "/etc/postfix/master.cf.orig"),
        // postconf through a symlink: its line is the link's.
        LISTING.replace(
            "-rwxr-xr-x 2 0 0 196328 1796546967.768542621 /usr/sbin/postconf",
            "lrwxrwxrwx 1 0 0 13 1796546967.768542621 /usr/sbin/postconf -> /opt/postconf",
        ),
        String::new(),
    ] {
        assert_eq!(key_of(&listing), None, "{listing}");
    }
}

/// `pc_memo` with the memo file holding `memo` and the key `pk`: the
/// answer it sets, or `None` when the memo is not taken.
fn memo_answer(memo: &str, pk: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("mxpin")).unwrap();
    std::fs::write(dir.path().join("mxpin").join(memo::MEMO), memo).unwrap();
    let body = format!(
        "pk={}\npc=unset\nif pc_memo; then printf '%s' \"$pc\"; else printf 'NO:%s' \"$pc\"; fi\n",
        quote(pk)
    );
    let out = run_sh_s(&with_memo_shell(dir.path().to_str().unwrap(), &body));
    let text = String::from_utf8(out.stdout).unwrap();
    match text.strip_prefix("NO:") {
        Some(pc) => {
            assert_eq!(pc, "unset", "a refused memo sets nothing");
            None
        }
        None => Some(text),
    }
}

#[test]
fn the_memo_is_taken_whole_and_only_for_its_key() {
    let pk = "mxpin postconf memo 1: a b\nhost h\n-rw-r--r-- 1 0 0 1 1.000000001 /c/main.cf";
    let answer = "mail_version = 3.7.11\nrelayhost = [a b]\\c\n  odd = x ";
    let whole = format!("{pk}\n@@answer\n{answer}\n@@end\n");
    assert_eq!(memo_answer(&whole, pk).as_deref(), Some(answer));
    // Another key, a key that only starts the same, a write cut short,
    // anything after the end, or no memo at all.
    let other = pk.replace("1.000000001", "1.000000002");
    assert_eq!(memo_answer(&whole, &other), None);
    assert_eq!(memo_answer(&whole, &format!("{pk}\nmore")), None);
    assert_eq!(memo_answer(&whole, "mxpin postconf memo 1: a b"), None);
    assert_eq!(memo_answer(&whole.replace("@@end\n", ""), pk), None);
    assert_eq!(
        memo_answer(&whole.replace("@@end\n", "@@end"), pk),
        None,
        "an end line without its newline was cut short"
    );
    assert_eq!(memo_answer(&format!("{whole}x\n"), pk), None);
    assert_eq!(memo_answer("", pk), None);
    assert_eq!(memo_answer(&whole, ""), None);
}

/// Writes the memo as an apply script does (`memo::key_and_ask`, then
/// `memo::write`).
fn refresh(lab: &Lab) {
    std::fs::create_dir_all(lab.path("mxpin")).unwrap();
    let body = format!("{}{}", memo::key_and_ask(), memo::write());
    let out = run_sh_s(&with_memo_shell(&lab.conf, &body));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the file system under the lab keeps change times to the
/// nanosecond (without that, no memo is ever taken).
fn nanosecond_ctime(lab: &Lab) -> bool {
    (0..5).any(|_| {
        std::fs::write(lab.path("ctime-probe"), "x").unwrap();
        let m = std::fs::metadata(lab.path("ctime-probe")).unwrap();
        std::fs::remove_file(lab.path("ctime-probe")).unwrap();
        m.ctime_nsec() != 0
    })
}

#[test]
fn live_facts_take_the_memo_only_while_its_key_holds() {
    require_root_and_postfix!();
    let lab = Lab::new();
    if !nanosecond_ctime(&lab) {
        eprintln!("SKIPPED: the file system keeps no nanoseconds of change time");
        return;
    }
    let asked = facts_from(&capture_raw(&lab.conf)).unwrap();
    assert!(!asked.memo);

    refresh(&lab);
    let memo_path = lab.path(&format!("mxpin/{}", memo::MEMO));
    let raw = capture_raw(&lab.conf);
    let taken = facts_from(&raw).unwrap();
    assert!(taken.memo, "{}", lab.read(&format!("mxpin/{}", memo::MEMO)));
    assert_eq!(taken.postconf, asked.postconf);
    // Taken from the memo for real: an answer put in it is what the facts
    // read.
    let text = std::fs::read_to_string(&memo_path).unwrap();
    let forged = text.replace("\nrelayhost =\n", "\nrelayhost = [forged.example]\n");
    assert_ne!(forged, text);
    std::fs::write(&memo_path, &forged).unwrap();
    let f = facts_from(&capture_raw(&lab.conf)).unwrap();
    assert!(f.memo);
    assert_eq!(f.effective["relayhost"], "[forged.example]");

    // main.cf edited in place to the same size (a comment): not taken.
    refresh(&lab);
    assert!(facts_from(&capture_raw(&lab.conf)).unwrap().memo);
    let main_cf = lab.read("main.cf");
    let edited = main_cf.replacen("# ", "#!", 1);
    assert!(edited.len() == main_cf.len() && edited != main_cf);
    std::fs::write(lab.path("main.cf"), &edited).unwrap();
    let f = facts_from(&capture_raw(&lab.conf)).unwrap();
    assert!(!f.memo);
    assert_eq!(f.postconf, asked.postconf);

    // A parameter added: postconf is asked, and sees it.
    refresh(&lab);
    std::fs::write(
        lab.path("main.cf"),
        format!("{edited}relayhost = [edited.example]\n"),
    )
    .unwrap();
    let f = facts_from(&capture_raw(&lab.conf)).unwrap();
    assert!(!f.memo);
    assert_eq!(f.effective["relayhost"], "[edited.example]");

    // A new memo holds until master.cf's mode changes (the same bytes).
    refresh(&lab);
    assert!(facts_from(&capture_raw(&lab.conf)).unwrap().memo);
    let mode = lab.mode("master.cf").0;
    std::fs::set_permissions(lab.path("master.cf"), std::fs::Permissions::from_mode(mode)).unwrap();
    assert!(!facts_from(&capture_raw(&lab.conf)).unwrap().memo);

    // A memo cut short is not taken.
    refresh(&lab);
    let text = std::fs::read_to_string(&memo_path).unwrap();
    std::fs::write(&memo_path, text.replace("@@end\n", "")).unwrap();
    assert!(!facts_from(&capture_raw(&lab.conf)).unwrap().memo);
}

/// A read that asks postconf gives its answer and its warnings apart, from
/// one postconf (a value that reads like a warning stays in the answer),
/// and the memo's key it asked under: the memo an apply writes from them
/// holds for the next read, as one written by asking again does.
#[test]
fn live_a_read_that_asks_postconf_gives_its_warnings_and_its_key() {
    require_root_and_postfix!();
    let lab = Lab::new();
    std::fs::write(
        lab.path("main.cf"),
        format!(
            "{}mxpin_unused_here = 1\nrelay_domains = a.example, postconf: warning: b.example\n",
            lab.read("main.cf")
        ),
    )
    .unwrap();
    let f = facts_from(&capture_raw(&lab.conf)).unwrap();
    assert!(!f.memo);
    let warnings = f.warnings.clone().unwrap();
    assert!(
        warnings.starts_with("postconf: warning: ")
            && warnings.contains("unused parameter: mxpin_unused_here=1"),
        "{warnings}"
    );
    assert!(!f.postconf.contains("unused parameter"), "{}", f.postconf);
    assert_eq!(
        f.effective["relay_domains"],
        "a.example, postconf: warning: b.example"
    );
    if !nanosecond_ctime(&lab) {
        eprintln!("SKIPPED (the memo): the file system keeps no nanoseconds of change time");
        return;
    }
    let key = f.memo_key.clone().expect("a key");
    std::fs::create_dir_all(lab.path("mxpin")).unwrap();
    let out = run_sh_s(&with_memo_shell(
        &lab.conf,
        &memo::from_read(&key, &f.postconf),
    ));
    assert!(out.status.success());
    let again = facts_from(&capture_raw(&lab.conf)).unwrap();
    assert!(again.memo);
    assert_eq!(again.postconf, f.postconf);
    assert_eq!((again.warnings, again.memo_key), (None, None));
}
