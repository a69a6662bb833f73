//! A real two-host lab (lab/lab.sh: sshd + Postfix per host, one network
//! namespace, loopback addresses only) and helpers to drive the real binary.
//! `Lab::up_with(&["--pair"])` starts the pair lab instead (home, vps,
//! world, stranger; see lab/README.md, "Pair").

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn mxpin_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mxpin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

pub struct Lab {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

impl Lab {
    /// Starts a lab, or returns None (with a visible message) when this
    /// machine cannot run one. With MXPIN_LAB_REQUIRED=1 (set by .ci/run) a
    /// lab that cannot start fails the test instead.
    pub fn up() -> Option<Lab> {
        Self::up_with(&[])
    }

    /// Starts a lab with extra `lab.sh up` arguments (`--exim relay`).
    pub fn up_with(extra: &[&str]) -> Option<Lab> {
        let required = std::env::var("MXPIN_LAB_REQUIRED").is_ok_and(|v| v == "1");
        if !is_root() {
            assert!(!required, "MXPIN_LAB_REQUIRED=1 but not running as root");
            eprintln!("SKIPPED: lab tests need root (network and mount namespaces)");
            return None;
        }
        let tmp = tempfile::Builder::new()
            .prefix("mxlab")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let netns = format!("mxt{}x{n}", std::process::id());
        let out = Command::new(repo().join("lab/lab.sh"))
            .arg("up")
            .arg(&dir)
            .arg(&netns)
            .args(extra)
            .output()
            .expect("run lab.sh");
        if !out.status.success() {
            let msg = format!("lab did not start: {:?}", Run::from(out));
            assert!(!required, "{msg}");
            eprintln!("SKIPPED: {msg}");
            return None;
        }
        Some(Lab { _tmp: tmp, dir })
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.join("mxpin.toml")
    }

    /// Runs the real mxpin binary inside the lab's network namespace.
    pub fn mxpin(&self, args: &[&str]) -> Run {
        let out = Command::new(repo().join("lab/lab.sh"))
            .arg("exec")
            .arg(&self.dir)
            .arg(mxpin_bin())
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .expect("run mxpin");
        Run::from(out)
    }

    /// Runs a command inside the lab's network namespace.
    pub fn exec(&self, cmd: &[&str]) -> Run {
        let out = Command::new(repo().join("lab/lab.sh"))
            .arg("exec")
            .arg(&self.dir)
            .args(cmd)
            .output()
            .expect("run in lab");
        Run::from(out)
    }

    /// Runs a shell command on a lab host as root, over ssh.
    pub fn ssh(&self, host: &str, cmd: &str) -> Run {
        let cfg = self.dir.join("ssh_config");
        self.exec(&["ssh", "-F", cfg.to_str().unwrap(), host, cmd])
    }

    pub fn maillog(&self, host: &str) -> String {
        std::fs::read_to_string(self.dir.join(host).join("maillog")).unwrap_or_default()
    }

    pub fn postfix_dir(&self, host: &str) -> PathBuf {
        self.dir.join(host).join("etc/postfix")
    }

    /// Every file of every host's Postfix configuration, by path.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        for host in ["home", "relay"] {
            collect(&self.postfix_dir(host), &mut files);
        }
        files
    }

    pub fn delivered(&self) -> Vec<String> {
        let dir = self.dir.join("home/mail/first.last/new");
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// The hosts of this lab: the pair lab's (`--pair`, listed in
    /// DIR/pair: home, vps, world, stranger), otherwise home and relay.
    pub fn hosts(&self) -> Vec<String> {
        match std::fs::read_to_string(self.dir.join("pair")) {
            Ok(list) => list.lines().map(str::to_string).collect(),
            Err(_) => vec!["home".into(), "relay".into()],
        }
    }

    /// Every file of the Postfix configuration of the given hosts, by path
    /// (`snapshot()` is this for home and relay).
    pub fn snapshot_hosts(&self, hosts: &[&str]) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut files = BTreeMap::new();
        for host in hosts {
            collect(&self.postfix_dir(host), &mut files);
        }
        files
    }

    /// `snapshot_hosts` of every host of this lab (see `hosts()`).
    pub fn snapshot_all(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let hosts = self.hosts();
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        self.snapshot_hosts(&hosts)
    }

    /// The messages in a virtual Maildir: DIR/HOST/mail/USER/new (home's
    /// first.last, the pair lab's world bob).
    pub fn delivered_to(&self, host: &str, user: &str) -> Vec<String> {
        let dir = self.dir.join(host).join("mail").join(user).join("new");
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    /// Submits a message with swaks to SERVER (an address, port 25) from
    /// the controller (127.0.0.1).
    pub fn send(&self, server: &str, rcpt: &str, from: &str, body: &str) -> Run {
        self.exec(&[
            "swaks",
            "--server",
            server,
            "--to",
            rcpt,
            "--from",
            from,
            "--body",
            body,
            "--timeout",
            "20",
        ])
    }

    /// `postqueue -p` on a lab host (as root, over ssh).
    pub fn queue(&self, host: &str) -> String {
        self.ssh(host, "postqueue -p").stdout
    }

    /// The number of messages in a host's Postfix queue (0 when empty or
    /// unreadable).
    pub fn queue_count(&self, host: &str) -> usize {
        queue_count(&self.queue(host))
    }

    /// `postqueue -f` on a lab host: retry every queued message now.
    pub fn flush(&self, host: &str) -> Run {
        self.ssh(host, "postqueue -f")
    }

    /// Inserts LINE into the inventory right after the header `[TABLE]`
    /// (e.g. `hosts.home`), as a user editing mxpin.toml would.
    pub fn inventory_add(&self, table: &str, line: &str) {
        let path = self.inventory();
        let text = std::fs::read_to_string(&path).expect("read mxpin.toml");
        let header = format!("[{table}]");
        let mut out = String::new();
        let mut found = false;
        for l in text.lines() {
            out.push_str(l);
            out.push('\n');
            if l.trim() == header {
                out.push_str(line);
                out.push('\n');
                found = true;
            }
        }
        assert!(found, "no {header} in {}:\n{text}", path.display());
        std::fs::write(&path, out).expect("write mxpin.toml");
    }

    /// Submits a message to the relay (the backup MX) with swaks.
    pub fn send_to_relay(&self, rcpt: &str, body: &str) -> Run {
        self.exec(&[
            "swaks",
            "--server",
            "127.0.0.3",
            "--to",
            rcpt,
            "--from",
            "sender@elsewhere.example",
            "--body",
            body,
            "--timeout",
            "20",
        ])
    }
}

/// The lab's Dovecot (`Lab::up_with(&["--dovecot", HOST])`; lab/README.md,
/// "Dovecot"): IMAP 143 / POP3 110 with STARTTLS required, 993 / 995
/// implicit TLS, one user with a Maildir.
impl Lab {
    /// DIR/dovecot: dovecot.conf, cert.pem, password, mail/USER/Maildir.
    pub fn dovecot_dir(&self) -> PathBuf {
        self.dir.join("dovecot")
    }

    /// The PEM certificate Dovecot serves.
    pub fn dovecot_cert(&self) -> PathBuf {
        self.dovecot_dir().join("cert.pem")
    }

    /// The login and password of the Dovecot user.
    pub fn dovecot_login(&self) -> (String, String) {
        let pw = std::fs::read_to_string(self.dovecot_dir().join("password"))
            .expect("a lab with --dovecot");
        ("me".to_string(), pw.trim().to_string())
    }

    fn dovecot_maildir(&self) -> PathBuf {
        self.dovecot_dir().join("mail/me/Maildir")
    }

    /// Puts a message with SUBJECT into the Dovecot user's Maildir (new/),
    /// owned by the mail user (nobody), as a delivery would.
    pub fn dovecot_add_message(&self, subject: &str) {
        use std::os::unix::fs::MetadataExt as _;
        let md = self.dovecot_maildir();
        let owner = std::fs::metadata(md.join("new")).expect("Maildir new/");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{}.M{n}P{}.mxpintest", unix_now(), std::process::id());
        let tmp = md.join("tmp").join(&name);
        let text = format!(
            "From: sender@elsewhere.example\nTo: me@mailbox.example\nSubject: {subject}\n\
             Message-ID: <{name}@mailbox.example>\n\n{subject}: a test message.\n"
        );
        std::fs::write(&tmp, text).expect("write message");
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid())).expect("chown");
        std::fs::rename(&tmp, md.join("new").join(&name)).expect("into new/");
    }

    /// The messages in the Dovecot user's Maildir (new/ and cur/).
    pub fn dovecot_messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.dovecot_maildir().join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    /// `lab.sh dovecot-cert`: Dovecot gets a new key and certificate.
    pub fn dovecot_new_cert(&self) -> Run {
        let out = Command::new(repo().join("lab/lab.sh"))
            .arg("dovecot-cert")
            .arg(&self.dir)
            .output()
            .expect("run lab.sh dovecot-cert");
        Run::from(out)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("lab/lab.sh"))
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}

fn collect(dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, files);
        } else if let Ok(bytes) = std::fs::read(&p) {
            files.insert(p, bytes);
        }
    }
}

/// The number of messages in `postqueue -p` output ("-- 2 Kbytes in 3
/// Requests."; "Mail queue is empty" is 0).
pub fn queue_count(postqueue: &str) -> usize {
    postqueue
        .lines()
        .rfind(|l| l.starts_with("-- "))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| w.starts_with("Request"))?;
            words.get(i.checked_sub(1)?)?.parse().ok()
        })
        .unwrap_or(0)
}

/// How many times NEEDLE occurs in a log.
pub fn log_count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// The lines of a log containing every one of NEEDLES.
pub fn log_lines<'a>(log: &'a str, needles: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

/// Polls `check` every 200 ms until it holds or `limit` passes.
pub fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

/// SHA-256 (hex) of the public key `addr:port` presents after STARTTLS,
/// read with an independent client (openssl s_client).
pub fn served_key(lab: &Lab, addr: &str, port: u16) -> String {
    let cmd = format!(
        "echo QUIT | timeout 20 openssl s_client -starttls smtp -connect {addr}:{port} 2>/dev/null \
         | openssl x509 -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum"
    );
    let run = lab.exec(&["bash", "-c", &cmd]);
    let fp = run
        .stdout
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(fp.len(), 64, "no certificate from {addr}:{port}: {run:?}");
    fp
}

/// Waits (bounded by `limit`) until messages `{prefix} 00` .. `{prefix}
/// {n-1}` (two digits) are all in home's Maildir.
pub fn all_delivered(lab: &Lab, prefix: &str, n: usize, limit: Duration) -> bool {
    wait_for(limit, || {
        let got = lab.delivered();
        (0..n).all(|i| got.iter().any(|m| m.contains(&format!("{prefix} {i:02}"))))
    })
}
