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
    msg.replace('\n', " ").trim().to_string()
}

/// A connection error with what fixes it, where ssh's own words do not
/// say: a host whose key is not in known_hosts (strict checking, mxpin's
/// default as ssh's) needs one interactive ssh first.
fn with_fix(message: String) -> String {
    if message.contains("Host key verification failed") {
        format!("{message} (ssh to it once, or add its key to known_hosts)")
    } else {
        message
    }
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
                message: with_fix(chain(&e)),
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
    use super::with_fix;

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
    }
}
