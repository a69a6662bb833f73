//! The transport: one OpenSSH master connection per host (so the user's
//! ssh config, agent, ProxyJump and known_hosts all apply), and scripts sent
//! on the standard input of `sh -s`, never on a command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openssh::{KnownHosts, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt as _;

use crate::inventory::{Host, SshDestination};

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

/// Runs a script on a host. Implemented by SSH sessions; the seam for tests
/// and other transports.
pub trait Transport {
    fn run_script(
        &self,
        script: &str,
    ) -> impl std::future::Future<Output = Result<RemoteOutput, SshError>> + Send;
}

fn chain(e: &dyn std::error::Error) -> String {
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
fn host_key_changed(msg: &str) -> Option<String> {
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

/// The host-key policy the user's ssh config asks for. openssh always
/// passes `-o StrictHostKeyChecking`, which would override the config, so
/// read the effective value with `ssh -G` (local, no connection) and pass it
/// on. Unset means strict.
async fn host_key_policy(dest: &SshDestination, config: Option<&Path>) -> KnownHosts {
    let mut cmd = tokio::process::Command::new("ssh");
    if let Some(c) = config {
        cmd.arg("-F").arg(c);
    }
    if let Some(p) = dest.port() {
        cmd.arg("-p").arg(p.to_string());
    }
    if let Some(u) = dest.user() {
        cmd.arg("-l").arg(u);
    }
    cmd.arg("-G").arg("--").arg(dest.host());
    let Ok(out) = cmd.output().await else {
        return KnownHosts::Strict;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("stricthostkeychecking "))
        .unwrap_or("true");
    match value.trim() {
        "accept-new" => KnownHosts::Add,
        "false" | "no" | "off" => KnownHosts::Accept,
        _ => KnownHosts::Strict,
    }
}

pub struct SshHost {
    session: openssh::Session,
    sudo: bool,
}

impl SshHost {
    pub async fn connect(host: &Host, config: Option<&Path>) -> Result<Self, SshError> {
        let dest = host.ssh.as_str();
        let mut b = SessionBuilder::default();
        if let Some(c) = config {
            b.config_file(PathBuf::from(c));
        }
        // User and port go to ssh as -l and -p: `user@host:port` as one
        // destination is not a form ssh knows.
        if let Some(u) = host.ssh.user() {
            b.user(u.to_string());
        }
        if let Some(p) = host.ssh.port() {
            b.port(p);
        }
        b.known_hosts_check(host_key_policy(&host.ssh, config).await)
            .connect_timeout(Duration::from_secs(15))
            .server_alive_interval(Duration::from_secs(15));
        let session = b
            .connect(host.ssh.host())
            .await
            .map_err(|e| SshError::Connect {
                dest: dest.to_string(),
                message: chain(&e),
            })?;
        Ok(SshHost {
            session,
            sudo: host.sudo,
        })
    }

    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

impl Transport for SshHost {
    async fn run_script(&self, script: &str) -> Result<RemoteOutput, SshError> {
        let mut cmd = if self.sudo {
            let mut c = self.session.command("sudo");
            c.args(["-n", "sh", "-s"]);
            c
        } else {
            let mut c = self.session.command("sh");
            c.arg("-s");
            c
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .await
            .map_err(|e| SshError::Session(chain(&e)))?;
        let mut stdin = child
            .stdin()
            .take()
            .ok_or_else(|| SshError::Session("no stdin".into()))?;
        let write = async {
            stdin.write_all(script.as_bytes()).await?;
            stdin.shutdown().await?;
            drop(stdin);
            Ok::<_, std::io::Error>(())
        };
        // A remote side that exits early (sudo refusing) closes the pipe;
        // its exit status and stderr say more than the write error.
        let written = write.await;
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| SshError::Session(chain(&e)))?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if self.sudo && out.stdout.is_empty() && stderr.starts_with("sudo:") {
            return Err(SshError::Sudo(stderr));
        }
        if !out.status.success() && out.stdout.is_empty() {
            return Err(SshError::Remote {
                status: out
                    .status
                    .code()
                    .map_or("by signal".to_string(), |c| c.to_string()),
                stderr,
            });
        }
        if let Err(e) = written {
            if out.stdout.is_empty() {
                return Err(SshError::Session(format!("sending script: {e}")));
            }
        }
        Ok(RemoteOutput {
            stdout: out.stdout,
            stderr,
        })
    }
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
}
