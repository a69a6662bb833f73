//! The transport: one OpenSSH master connection per host (so the user's
//! ssh config, agent, ProxyJump and known_hosts all apply), and scripts sent
//! on the standard input of `sh -s`, never on a command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openssh::{Child, Stdio};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::inventory::Host;

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

/// A connection error with what fixes it, where ssh's own words do not
/// say: a host whose key is not in known_hosts (strict checking, mxpin's
/// default as ssh's) needs one interactive ssh first.
fn with_fix(message: String) -> String {
    if message.contains("Host key verification failed") && !message.contains("has changed") {
        format!("{message} (ssh to it once, or add its key to known_hosts)")
    } else {
        message
    }
}

/// How long an ssh master outlives its last session. Every run keeps a
/// session open on each host it holds (its lock, see [`SshHost::hold`]), so
/// this only ends the masters of a run that was killed (SIGKILL) and could
/// not close them.
const MASTER_IDLE_SECS: usize = 30;

/// Where this run's ssh masters keep their control sockets:
/// `$XDG_STATE_HOME/mxpin/run-PID` (or `~/.local/state/...`), made once.
/// Directories of runs that are gone (killed, so they could not clean up)
/// are removed on the way; their masters ended on their own after
/// [`MASTER_IDLE_SECS`].
static CONTROL_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

fn control_dir() -> Option<&'static Path> {
    CONTROL_DIR
        .get_or_init(|| {
            let base = std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"))
                })?
                .join("mxpin");
            std::fs::create_dir_all(&base).ok()?;
            remove_stale_runs(&base);
            let dir = base.join(format!("run-{}", std::process::id()));
            std::fs::create_dir_all(&dir).ok()?;
            Some(dir)
        })
        .as_deref()
}

/// Removes `run-PID` directories whose process is gone (Linux: no
/// `/proc/PID`). A live run's directory is kept.
fn remove_stale_runs(base: &Path) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("run-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes this run's control directory once every connection is closed.
pub fn remove_control_dir() {
    if let Some(Some(dir)) = CONTROL_DIR.get() {
        let _ = std::fs::remove_dir(dir);
    }
}

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

/// What ssh logged when it could not connect, as one message: the words
/// openssh's own error gives (`failed to connect to the remote host: ...`),
/// without ssh's "ssh: " prefix or a known-hosts notice before the error.
fn connect_error(log: &str) -> String {
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

/// Ends a master: the mux protocol's terminate request on its control
/// socket (what `ssh -O exit` sends, without starting a process), or
/// `ssh -O exit` if the socket does not take it; then removes its
/// directory.
fn end_master(dir: tempfile::TempDir) {
    let ctl = dir.path().join("master");
    if ctl.exists() && mux_terminate(&ctl).is_err() {
        let _ = std::process::Command::new("ssh")
            .arg("-S")
            .arg(&ctl)
            .args(["-o", "BatchMode=yes", "-O", "exit", "none"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = dir.close();
}

/// OpenSSH's control protocol (PROTOCOL.mux): hello (version 4) both
/// ways, then `MUX_C_TERMINATE`, answered by `MUX_S_OK`.
fn mux_terminate(ctl: &Path) -> std::io::Result<()> {
    use std::io::{Read as _, Write as _};
    const HELLO: u32 = 0x0000_0001;
    const TERMINATE: u32 = 0x1000_0005;
    const OK: u32 = 0x8000_0001;
    fn packet(words: &[u32]) -> Vec<u8> {
        let body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let mut p = u32::try_from(body.len())
            .expect("small")
            .to_be_bytes()
            .to_vec();
        p.extend(body);
        p
    }
    fn read_type(s: &mut std::os::unix::net::UnixStream) -> std::io::Result<u32> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if !(4..=256 * 1024).contains(&len) {
            return Err(std::io::Error::other("bad mux packet"));
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body)?;
        Ok(u32::from_be_bytes([body[0], body[1], body[2], body[3]]))
    }
    let mut s = std::os::unix::net::UnixStream::connect(ctl)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&packet(&[HELLO, 4]))?;
    if read_type(&mut s)? != HELLO {
        return Err(std::io::Error::other("no mux hello"));
    }
    s.write_all(&packet(&[TERMINATE, 1]))?;
    // The master may exit before its answer is out (OpenSSH says so in
    // mux.c): the socket closing is the answer then, as for `ssh -O exit`.
    match read_type(&mut s) {
        Ok(OK) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        Ok(_) => Err(std::io::Error::other("terminate refused")),
        Err(e) => Err(e),
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
