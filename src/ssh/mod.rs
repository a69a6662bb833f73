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
    child: HoldChild,
}

/// The local end of a hold: the `ssh` that started the master and runs the
/// hold as its first session, or a later session over the master.
enum HoldChild {
    First(tokio::process::Child),
    Mux(Child<Arc<openssh::Session>>),
}

impl Held {
    /// Closes the shell's standard input, so it lets go of the lock, and
    /// waits (bounded) for it to end.
    pub async fn release(self) {
        let wait = crate::limits::LOCK_RELEASE_WAIT;
        match self.child {
            HoldChild::First(mut c) => {
                drop(c.stdin.take());
                let _ = tokio::time::timeout(wait, c.wait()).await;
            }
            HoldChild::Mux(mut c) => {
                drop(c.stdin().take());
                let _ = tokio::time::timeout(wait, c.wait()).await;
            }
        }
    }
}

/// Reads `stdout` until it ends with `marker` on a line of its own (`true`,
/// the marker cut off) or ends (`false`).
async fn read_to_marker(
    stdout: &mut (impl tokio::io::AsyncRead + Unpin),
    marker: &str,
) -> Result<(Vec<u8>, bool), SshError> {
    let end = format!("{marker}\n");
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stdout
            .read(&mut buf)
            .await
            .map_err(|e| SshError::Session(format!("reading: {e}")))?;
        if n == 0 {
            return Ok((out, false));
        }
        out.extend_from_slice(&buf[..n]);
        if out.ends_with(end.as_bytes()) {
            out.truncate(out.len() - end.len());
            return Ok((out, true));
        }
    }
}

/// Reads a stream to its end in a task, so the remote side never blocks
/// on a full pipe; the task gives what it read.
fn drain(
    mut stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stream.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).trim().to_string()
    })
}

impl SshHost {
    /// Starts the host's ssh master, as openssh's `SessionBuilder` does,
    /// but without `-o StrictHostKeyChecking` (which would override the
    /// user's ssh config): ssh applies the config's own host-key policy,
    /// which is strict unless it says otherwise (BatchMode turns "ask"
    /// into a refusal). No `ssh -G` first.
    ///
    /// The same `ssh` process runs the hold `script` (see [`Self::hold`])
    /// as its first session: with `ControlPersist`, ssh puts the master in
    /// the background once it is connected and authenticated, and the
    /// process it started from becomes the session's client. That saves
    /// the start of a second `ssh` (about 7 ms of CPU) and a round trip
    /// per host. Later sessions (apply scripts, a hold tried again) go
    /// over the master's control socket.
    ///
    /// An error is a connection that failed; once connected, the hold's
    /// own outcome comes with the connection.
    pub async fn connect_and_hold(
        host: &Host,
        config: Option<&Path>,
        script: &str,
        marker: &str,
    ) -> Result<(Self, Result<Hold, SshError>), SshError> {
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
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .arg("-E")
            .arg(&log)
            .arg("-S")
            .arg(&ctl)
            .args(["-M", "-T", "-o"])
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
        cmd.args(shell_words(host.sudo));
        let mut child = cmd
            .spawn()
            .map_err(|e| err(format!("cannot run ssh: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = child.stdout.take().expect("piped");
        let errors = drain(child.stderr.take().expect("piped"));
        // The script stays open (no EOF): the remote shell's last command
        // waits for it.
        let written = stdin.write_all(script.as_bytes()).await;
        let read = read_to_marker(&mut stdout, marker).await;
        // The master's socket is there once ssh is connected and
        // authenticated, whatever the remote shell did then.
        let connected = ctl.exists();
        let host_of = |dir: tempfile::TempDir| SshHost {
            session: Arc::new(openssh::Session::resume(
                ctl.clone().into_boxed_path(),
                Some(log.clone().into_boxed_path()),
            )),
            sudo: host.sudo,
            master: Some(dir),
        };
        match read {
            Ok((out, true)) => {
                child.stdin = Some(stdin);
                // Its stderr is read to the end by the task; what the
                // shell says while the lock is held is not needed.
                drop(errors);
                let held = Held {
                    child: HoldChild::First(child),
                };
                let out = RemoteOutput {
                    stdout: out,
                    stderr: String::new(),
                };
                Ok((host_of(dir), Ok(Hold::Held(Box::new(held), out))))
            }
            Ok((out, false)) => {
                drop(stdin);
                let status = child.wait().await;
                let stderr = errors.await.unwrap_or_default();
                if !connected {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(err(connect_error(&said)));
                }
                let conn = host_of(dir);
                let ended = match status {
                    Ok(status) => conn
                        .verdict(status, out, stderr, written.err())
                        .map(Hold::Ended),
                    Err(e) => Err(SshError::Session(format!("waiting for ssh: {e}"))),
                };
                Ok((conn, ended))
            }
            Err(e) if connected => Ok((host_of(dir), Err(e))),
            Err(e) => Err(err(e.to_string())),
        }
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
        let words = shell_words(self.sudo);
        let mut c = self.session.clone().arc_command(words[0]);
        c.args(&words[1..]);
        c
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
        let stderr = child
            .stderr()
            .take()
            .ok_or_else(|| SshError::Session("no stderr".into()))?;
        // The script stays open (no EOF): the remote shell's last command
        // waits for it.
        let written = stdin.write_all(script.as_bytes()).await;
        let errors = drain(stderr);
        let (out, held) = read_to_marker(&mut stdout, marker).await?;
        if held {
            *child.stdin() = Some(stdin);
            // Its stderr is read to the end by the task; what the shell
            // says while the lock is held is not needed.
            drop(errors);
            return Ok(Hold::Held(
                Box::new(Held {
                    child: HoldChild::Mux(child),
                }),
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

/// The remote command every script is sent to, on its standard input.
fn shell_words(sudo: bool) -> &'static [&'static str] {
    if sudo {
        &["sudo", "-n", "sh", "-s"]
    } else {
        &["sh", "-s"]
    }
}
