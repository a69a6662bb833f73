//! The transport: one OpenSSH master connection per host (so the user's
//! ssh config, agent, ProxyJump and known_hosts all apply), and scripts sent
//! on the standard input of `sh -s`, never on a command line.

use std::path::Path;
use std::sync::Arc;

use openssh::{Child, Stdio};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::inventory::Host;

mod control;
mod errors;

pub use control::remove_control_dir;
use control::{control_dir, end_master, MASTER_IDLE_SECS};
use errors::{chain, connect_error, with_fix};
pub use errors::{RemoteOutput, SshError};

pub struct SshHost {
    session: Arc<openssh::Session>,
    sudo: bool,
    /// The master's directory (control socket and log); the master is
    /// told to exit, and the directory removed, on close or drop.
    master: Option<tempfile::TempDir>,
}

/// What a hold on a host's lock found.
pub enum Hold {
    /// The lock is held until [`Held::release`]; the output before the
    /// marker.
    Held(Box<Held>, RemoteOutput),
    /// The remote script ended without taking the lock (busy, refused, or
    /// failed): everything it printed.
    Ended(RemoteOutput),
}

/// A remote shell holding a lock: it waits for its standard input to close.
pub struct Held {
    child: Child<Arc<openssh::Session>>,
}

impl Held {
    /// Closes the shell's standard input, so it lets go of the lock, and
    /// waits (bounded) for it to end.
    pub async fn release(mut self) {
        drop(self.child.stdin().take());
        let _ = tokio::time::timeout(crate::limits::LOCK_RELEASE_WAIT, self.child.wait()).await;
    }
}

impl SshHost {
    /// Starts the host's ssh master, as openssh's `SessionBuilder` does,
    /// but without `-o StrictHostKeyChecking` (which would override the
    /// user's ssh config): ssh applies the config's own host-key policy,
    /// which is strict unless it says otherwise (BatchMode turns "ask"
    /// into a refusal). One process per host, no `ssh -G` first.
    pub async fn connect(host: &Host, config: Option<&Path>) -> Result<Self, SshError> {
        let dest = host.ssh.as_str();
        let err = |message: String| SshError::Connect {
            dest: dest.to_string(),
            message: with_fix(message),
        };
        let base = control_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(".ssh-connection")
            .tempdir_in(&base)
            .map_err(|e| err(format!("control directory in {}: {e}", base.display())))?;
        let log = dir.path().join("log");
        let ctl = dir.path().join("master");
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .arg("-E")
            .arg(&log)
            .arg("-S")
            .arg(&ctl)
            .args(["-M", "-f", "-N", "-o"])
            .arg(format!("ControlPersist={MASTER_IDLE_SECS}s"))
            .args(["-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "ConnectTimeout={}",
                crate::limits::SSH_CONNECT_TIMEOUT.as_secs()
            ))
            .arg("-o")
            .arg(format!(
                "ServerAliveInterval={}",
                crate::limits::SSH_ALIVE_INTERVAL.as_secs()
            ));
        // User and port go to ssh as -l and -p: `user@host:port` as one
        // destination is not a form ssh knows.
        if let Some(p) = host.ssh.port() {
            cmd.arg("-p").arg(p.to_string());
        }
        if let Some(u) = host.ssh.user() {
            cmd.arg("-l").arg(u);
        }
        if let Some(c) = config {
            cmd.arg("-F").arg(c);
        }
        cmd.arg("--").arg(host.ssh.host());
        // ssh forks into the background once it is connected and
        // authenticated, so its exit status says whether it got there.
        let status = cmd
            .status()
            .await
            .map_err(|e| err(format!("cannot run ssh: {e}")))?;
        if !status.success() {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(err(connect_error(&said)));
        }
        let session = openssh::Session::resume(ctl.into_boxed_path(), Some(log.into_boxed_path()));
        Ok(SshHost {
            session: Arc::new(session),
            sudo: host.sudo,
            master: Some(dir),
        })
    }

    /// Tells the master to exit and removes its directory.
    pub async fn close(mut self) {
        if let Some(dir) = self.master.take() {
            let _ = tokio::task::spawn_blocking(move || end_master(dir)).await;
        }
    }

    /// Starts the remote shell with every stream piped; its stdin apart.
    async fn spawn_shell(
        &self,
    ) -> Result<(Child<Arc<openssh::Session>>, openssh::ChildStdin), SshError> {
        let mut cmd = self.shell();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .await
            .map_err(|e| SshError::Session(chain(&e)))?;
        let stdin = child
            .stdin()
            .take()
            .ok_or_else(|| SshError::Session("no stdin".into()))?;
        Ok((child, stdin))
    }

    fn shell(&self) -> openssh::OwningCommand<Arc<openssh::Session>> {
        if self.sudo {
            let mut c = self.session.clone().arc_command("sudo");
            c.args(["-n", "sh", "-s"]);
            c
        } else {
            let mut c = self.session.clone().arc_command("sh");
            c.arg("-s");
            c
        }
    }

    /// Runs a script that takes a lock and then prints `marker` on a line
    /// of its own and waits for its standard input to close. The output
    /// before the marker is returned with the hold; a script that ends
    /// without printing it gives everything it printed.
    pub async fn hold(&self, script: &str, marker: &str) -> Result<Hold, SshError> {
        let (mut child, mut stdin) = self.spawn_shell().await?;
        let mut stdout = child
            .stdout()
            .take()
            .ok_or_else(|| SshError::Session("no stdout".into()))?;
        let mut stderr = child
            .stderr()
            .take()
            .ok_or_else(|| SshError::Session("no stderr".into()))?;
        // The script stays open (no EOF): the remote shell's last command
        // waits for it.
        let written = stdin.write_all(script.as_bytes()).await;
        let errors = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            String::from_utf8_lossy(&buf).trim().to_string()
        });
        let end = format!("{marker}\n");
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let held = loop {
            let n = stdout
                .read(&mut buf)
                .await
                .map_err(|e| SshError::Session(format!("reading: {e}")))?;
            if n == 0 {
                break false;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(end.as_bytes()) {
                out.truncate(out.len() - end.len());
                break true;
            }
        };
        if held {
            *child.stdin() = Some(stdin);
            // Its stderr is read to the end by the task, so the remote
            // side never blocks on a full pipe; what it says while the lock
            // is held is not needed.
            drop(errors);
            return Ok(Hold::Held(
                Box::new(Held { child }),
                RemoteOutput {
                    stdout: out,
                    stderr: String::new(),
                },
            ));
        }
        drop(stdin);
        let status = child
            .wait()
            .await
            .map_err(|e| SshError::Session(chain(&e)))?;
        let stderr = errors.await.unwrap_or_default();
        self.verdict(status, out, stderr, written.err())
            .map(Hold::Ended)
    }

    /// The outcome of a finished remote shell, as [`Transport::run_script`]
    /// reports it.
    fn verdict(
        &self,
        status: std::process::ExitStatus,
        stdout: Vec<u8>,
        stderr: String,
        write_error: Option<std::io::Error>,
    ) -> Result<RemoteOutput, SshError> {
        if self.sudo && stdout.is_empty() && stderr.starts_with("sudo:") {
            return Err(SshError::Sudo(stderr));
        }
        if !status.success() && stdout.is_empty() {
            return Err(SshError::Remote {
                status: status
                    .code()
                    .map_or("by signal".to_string(), |c| c.to_string()),
                stderr,
            });
        }
        if let Some(e) = write_error {
            if stdout.is_empty() {
                return Err(SshError::Session(format!("sending script: {e}")));
            }
        }
        Ok(RemoteOutput { stdout, stderr })
    }
}

impl Drop for SshHost {
    /// A run cut short (a signal) still ends its masters.
    fn drop(&mut self) {
        if let Some(dir) = self.master.take() {
            end_master(dir);
        }
    }
}

impl SshHost {
    /// Runs `script` with the remote shell, its stdin the script.
    pub async fn run_script(&self, script: &str) -> Result<RemoteOutput, SshError> {
        let (child, mut stdin) = self.spawn_shell().await?;
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
        self.verdict(out.status, out.stdout, stderr, written.err())
    }
}
