//! What ssh says when it fails, as one line with the fix: a changed or
//! unknown host key, sudo asking for a password, a remote failure.

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("ssh {dest}: {message}")]
    Connect { dest: String, message: String },
    #[error("sudo -n refused (a password is required or sudo is not allowed): {0}")]
    Sudo(String),
    #[error("remote command failed (exit {status}): {stderr}")]
    Remote { status: String, stderr: String },
    #[error("ssh session failed: {0}")]
    Session(String),
}

/// What a remote script printed.
#[derive(Debug)]
pub struct RemoteOutput {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg = format!("{msg}: {s_msg}");
        }
        src = s.source();
    }
    if let Some(summary) = host_key_changed(&msg) {
        // Keep what came before ssh's banner (the crate's own words).
        let banner = msg.find("@@@").unwrap_or(0);
        msg = format!("{}{summary}", &msg[..banner]);
    }
    msg.replace('\n', " ").trim().to_string()
}

/// ssh's changed-host-key warning (a banner of `@` lines and a dozen lines
/// of advice) as the one line that says what happened and where the old
/// key is; `None` for any other message.
pub(super) fn host_key_changed(msg: &str) -> Option<String> {
    if !msg.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return None;
    }
    let lines: Vec<&str> = msg.lines().map(str::trim).collect();
    let host = lines.iter().find_map(|l| {
        l.split_once("Host key for ")
            .and_then(|(_, r)| r.split_once(" has changed"))
            .map(|(h, _)| h)
    });
    // "The fingerprint for the ED25519 key sent by the remote host is"
    // and the fingerprint on the next line.
    let sent = lines.iter().enumerate().find_map(|(i, l)| {
        let kind = l
            .strip_prefix("The fingerprint for the ")?
            .strip_suffix(" key sent by the remote host is")?;
        let fp = lines.get(i + 1)?.trim_end_matches('.');
        Some(format!("{kind} key {fp}"))
    });
    let offending = lines
        .iter()
        .find(|l| l.starts_with("Offending "))
        .map(|l| l.to_string());
    let mut out = format!(
        "host key for {} has changed",
        host.unwrap_or("the remote host")
    );
    if let Some(s) = sent {
        out.push_str(&format!(" (it now sends {s})"));
    }
    if let Some(o) = offending {
        out.push_str(&format!("; {o}"));
    }
    out.push_str(
        "; if the change is expected, remove that line (ssh-keygen -R HOST), \
         else someone may be intercepting the connection",
    );
    Some(out)
}

/// A connection error with what fixes it, where ssh's own words do not
/// say: a host whose key is not in known_hosts (strict checking, mxpin's
/// default as ssh's) needs one interactive ssh first.
pub(super) fn with_fix(message: String) -> String {
    if message.contains("Host key verification failed") && !message.contains("has changed") {
        format!("{message} (ssh to it once, or add its key to known_hosts)")
    } else {
        message
    }
}

/// What ssh logged when it could not connect, as one message: the words
/// openssh's own error gives (`failed to connect to the remote host: ...`),
/// without ssh's "ssh: " prefix or a known-hosts notice before the error.
pub(super) fn connect_error(log: &str) -> String {
    let mut said = log.trim();
    said = said.strip_prefix("ssh: ").unwrap_or(said);
    if said.starts_with("Warning: Permanently added ") {
        said = said.split_once('\n').map_or("", |x| x.1.trim());
    }
    let mut msg = format!("failed to connect to the remote host: {said}");
    if let Some(summary) = host_key_changed(&msg) {
        let banner = msg.find("@@@").unwrap_or(0);
        msg = format!("{}{summary}", &msg[..banner]);
    }
    msg.replace('\n', " ").trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What OpenSSH 9.2 (Debian 12) logs when a known host's key changed.
    const CHANGED: &str = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:6xkZ0cPq2wJ3m8kTLrJgmJm3pXr0e0cF1dD2sY6tVqE.
Please contact your system administrator.
Add correct host key in /root/.ssh/known_hosts to get rid of this message.
Offending ED25519 key in /root/.ssh/known_hosts:3
  remove with:
  ssh-keygen -f \"/root/.ssh/known_hosts\" -R \"127.0.0.2\"
Host key for 127.0.0.2 has changed and you have requested strict checking.
Host key verification failed.
";

    #[derive(Debug, thiserror::Error)]
    #[error("failed to connect to the remote host")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_changed_host_key_is_one_informative_line() {
        let e = Outer(std::io::Error::other(CHANGED));
        assert_eq!(
            chain(&e),
            "failed to connect to the remote host: host key for 127.0.0.2 has changed (it now \
             sends ED25519 key SHA256:6xkZ0cPq2wJ3m8kTLrJgmJm3pXr0e0cF1dD2sY6tVqE); Offending \
             ED25519 key in /root/.ssh/known_hosts:3; if the change is expected, remove that line \
             (ssh-keygen -R HOST), else someone may be intercepting the connection"
        );
        let e = Outer(std::io::Error::other("ssh: Could not resolve hostname x\n"));
        assert_eq!(
            chain(&e),
            "failed to connect to the remote host: ssh: Could not resolve hostname x"
        );
    }

    #[test]
    fn an_unknown_host_key_error_says_the_fix() {
        let e = "failed to connect to the remote host: No ED25519 host key is known for \
                 relay and you have requested strict checking. Host key verification failed.";
        assert_eq!(
            with_fix(e.into()),
            format!("{e} (ssh to it once, or add its key to known_hosts)")
        );
        let refused = "failed to connect to the remote host: Connection refused";
        assert_eq!(with_fix(refused.into()), refused);
        // A changed key is not fixed by connecting once.
        let changed = chain(&Outer(std::io::Error::other(CHANGED)));
        assert_eq!(with_fix(changed.clone()), changed);
    }
}
