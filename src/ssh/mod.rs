//! The transport: one OpenSSH connection per host, through the `ssh`
//! command (so the user's ssh config, agent, ProxyJump and known_hosts all
//! apply), a master when the run sends the host more than one command
//! (see [`Master`]), and scripts sent on the standard input of `sh -s`,
//! never on a command line.
//!
//! A later session over a master is opened by mxpin itself on the master's
//! control socket (openssh's native mux: the session's pipes are passed to
//! the master), not by an `ssh -S` client process per session: that
//! process, its start and its relaying, cost about 4 ms of CPU a host in a
//! rotation (issue 15).

use std::ffi::OsString;
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
    /// ssh's options and destination, from `-E` to `-- HOST`: how a
    /// master started on demand (see [`Master::OnDemand`]) connects.
    args: Vec<OsString>,
    dest: String,
    /// The master's session, once there is a master.
    session: tokio::sync::OnceCell<Arc<openssh::Session>>,
    sudo: bool,
    /// The connection's directory (ssh's log, and the master's control
    /// socket once there is one); the master is told to exit, and the
    /// directory removed, on close or drop.
    master: Option<tempfile::TempDir>,
}

/// When a host's ssh master (the connection a run's later commands to the
/// host share) starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Master {
    /// With the first read, in the same `ssh` process: for runs that send
    /// most hosts more commands (apply scripts).
    First,
    /// Only when a second command is sent to the host: for runs that read
    /// each host once (plan, verify), whose first read is then a plain
    /// `ssh HOST sh -s`, as cheap as the floor's `ssh HOST true` but for
    /// the script. A master costs about 4 ms of CPU a host (its fork, the
    /// control socket, every byte relayed through it); one started later
    /// costs a second handshake, which only a host that is busy, or read
    /// again, pays.
    OnDemand,
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
    /// Connects to the host and runs the hold `script` (see [`Self::hold`])
    /// as its first session, in one `ssh` process. ssh runs as openssh's
    /// `SessionBuilder` would run it, but without `-o
    /// StrictHostKeyChecking` (which would override the user's ssh config):
    /// ssh applies the config's own host-key policy, which is strict unless
    /// it says otherwise (BatchMode turns "ask" into a refusal). No `ssh -G`
    /// first.
    ///
    /// With [`Master::First`] that process starts the master: with
    /// `ControlPersist`, ssh puts the master in the background once it is
    /// connected and authenticated, and the process it started from becomes
    /// the session's client. That saves the start of a second `ssh` (about
    /// 7 ms of CPU) and a round trip per host. Later sessions (apply
    /// scripts, a hold tried again) go over the master's control socket.
    /// With [`Master::OnDemand`] it is a plain connection, and the master
    /// starts when a later session needs it.
    ///
    /// An error is a connection that failed; once connected, the hold's
    /// own outcome comes with the connection.
    pub async fn connect_and_hold(
        host: &Host,
        config: Option<&Path>,
        master: Master,
        script: &str,
        marker: &str,
    ) -> Result<(Self, Result<Hold, SshError>), SshError> {
        let dest = host.ssh.as_str();
        let err = |message: String| connect_failed(dest, message);
        let base = control_dir()
            .map(Path::to_path_buf)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix(".ssh-connection")
            .tempdir_in(&base)
            .map_err(|e| err(format!("control directory in {}: {e}", base.display())))?;
        let (ctl, log) = paths(dir.path());
        let args = ssh_args(host, config, &log);
        let mut cmd = tokio::process::Command::new("ssh");
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if master == Master::First {
            cmd.arg("-S").arg(&ctl).args(master_args());
        }
        cmd.arg("-T").args(&args).args(shell_words(host.sudo));
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
        let session = match ctl.exists() {
            true => tokio::sync::OnceCell::new_with(Some(Arc::new(openssh::Session::resume_mux(
                ctl.clone().into_boxed_path(),
                Some(log.clone().into_boxed_path()),
            )))),
            false => tokio::sync::OnceCell::new(),
        };
        let conn = SshHost {
            args,
            dest: dest.to_string(),
            session,
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
                Ok((conn, Ok(Hold::Held(Box::new(held), out))))
            }
            Ok((out, false)) => {
                drop(stdin);
                let status = child.wait().await;
                let stderr = errors.await.unwrap_or_default();
                // ssh's own failures exit 255 (the hold script exits 0,
                // sudo 1): without a master, that and no output is a
                // connection that failed.
                let connected = match master {
                    Master::First => conn.session.initialized(),
                    Master::OnDemand => {
                        !out.is_empty() || status.as_ref().is_ok_and(|s| s.code() != Some(255))
                    }
                };
                if !connected {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(err(connect_error(&said)));
                }
                let ended = match status {
                    Ok(status) => conn
                        .verdict(status, out, stderr, written.err())
                        .map(Hold::Ended),
                    Err(e) => Err(SshError::Session(format!("waiting for ssh: {e}"))),
                };
                Ok((conn, ended))
            }
            Err(e) if conn.session.initialized() => Ok((conn, Err(e))),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The master's session: the one started with the first read, or one
    /// started now (`ssh -M -f -N`: it goes to the background once it is
    /// connected and authenticated, so its exit status says whether it got
    /// there).
    async fn session(&self) -> Result<&Arc<openssh::Session>, SshError> {
        self.session
            .get_or_try_init(|| async {
                let err = |message: String| connect_failed(&self.dest, message);
                let dir = self
                    .master
                    .as_ref()
                    .ok_or_else(|| err("the connection is closed".into()))?;
                let (ctl, log) = paths(dir.path());
                let status = tokio::process::Command::new("ssh")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .arg("-S")
                    .arg(&ctl)
                    .args(master_args())
                    .args(["-f", "-N"])
                    .args(&self.args)
                    .status()
                    .await
                    .map_err(|e| err(format!("cannot run ssh: {e}")))?;
                if !status.success() || !ctl.exists() {
                    let said = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(err(connect_error(&said)));
                }
                Ok(Arc::new(openssh::Session::resume_mux(
                    ctl.into_boxed_path(),
                    Some(log.into_boxed_path()),
                )))
            })
            .await
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
        let words = shell_words(self.sudo);
        let mut cmd = self.session().await?.clone().arc_command(words[0]);
        cmd.args(&words[1..]);
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

/// A connection to `dest` that failed, with the fix where there is one.
fn connect_failed(dest: &str, message: String) -> SshError {
    SshError::Connect {
        dest: dest.to_string(),
        message: with_fix(message),
    }
}

/// The master's control socket and ssh's log in a connection's directory.
fn paths(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("master"), dir.join("log"))
}

/// ssh's options and destination for `host`, from `-E LOG` to `-- HOST`:
/// the same for the first read and for a master started later.
fn ssh_args(host: &Host, config: Option<&Path>, log: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-E".into(), log.into()];
    for o in [
        "BatchMode=yes".to_string(),
        format!(
            "ConnectTimeout={}",
            crate::limits::SSH_CONNECT_TIMEOUT.as_secs()
        ),
        format!(
            "ServerAliveInterval={}",
            crate::limits::SSH_ALIVE_INTERVAL.as_secs()
        ),
    ] {
        args.extend(["-o".into(), o.into()]);
    }
    // User and port go to ssh as -l and -p: `user@host:port` as one
    // destination is not a form ssh knows.
    if let Some(p) = host.ssh.port() {
        args.extend(["-p".into(), p.to_string().into()]);
    }
    if let Some(u) = host.ssh.user() {
        args.extend(["-l".into(), u.into()]);
    }
    if let Some(c) = config {
        args.extend(["-F".into(), c.into()]);
    }
    args.extend(["--".into(), host.ssh.host().into()]);
    args
}

/// The options that make an `ssh` the master (after `-S SOCKET`).
fn master_args() -> [String; 3] {
    [
        "-M".into(),
        "-o".into(),
        format!("ControlPersist={MASTER_IDLE_SECS}s"),
    ]
}

/// The remote command every script is sent to, on its standard input.
fn shell_words(sudo: bool) -> &'static [&'static str] {
    if sudo {
        &["sudo", "-n", "sh", "-s"]
    } else {
        &["sh", "-s"]
    }
}
