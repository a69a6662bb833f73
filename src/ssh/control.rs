//! The ssh masters' control directory of a run, and ending a master: the
//! mux protocol's terminate request on its socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an ssh master outlives its last session. Every run keeps a
/// session open on each host it holds (its lock, see [`super::SshHost::hold`]), so
/// this only ends the masters of a run that was killed (SIGKILL) and could
/// not close them.
pub(super) const MASTER_IDLE_SECS: usize = 30;

/// Where this run's ssh masters keep their control sockets:
/// `$XDG_STATE_HOME/mxpin/run-PID` (or `~/.local/state/...`), made once.
/// Directories of runs that are gone (killed, so they could not clean up)
/// are removed on the way; their masters ended on their own after
/// [`MASTER_IDLE_SECS`].
static CONTROL_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

pub(super) fn control_dir() -> Option<&'static Path> {
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

/// Ends a master: the mux protocol's terminate request on its control
/// socket (what `ssh -O exit` sends, without starting a process), or
/// `ssh -O exit` if the socket does not take it; then removes its
/// directory.
pub(super) fn end_master(dir: tempfile::TempDir) {
    let (ctl, _) = super::paths(dir.path());
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
