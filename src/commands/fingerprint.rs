//! `mxpin fingerprint`: the fingerprints of a PEM file, or of what a
//! server presents.

use std::io::Write as _;
use std::path::PathBuf;

use crate::fingerprint::{self, Format, Source};
use crate::probe::{self, StartTls};
use crate::tls::{Certificate, Digest, PinKind};

/// The output format: `--format`, or `--json` (which is `--format json`;
/// both at once only when they agree).
pub fn format(format: Option<Format>, json: bool) -> Result<Format, String> {
    match (format, json) {
        (None, false) => Ok(Format::Text),
        (None, true) | (Some(Format::Json), _) => Ok(Format::Json),
        (Some(f), false) => Ok(f),
        (Some(_), true) => Err("fingerprint: --json is --format json; give one of them".into()),
    }
}

/// The server of `--connect HOST:PORT` as the output names it: the host
/// without IPv6 brackets, and the port.
pub fn server(addr: &str) -> Result<Source<'_>, String> {
    match addr.rsplit_once(':') {
        Some((host, port)) => Ok(Source::Server {
            host: host.trim_start_matches('[').trim_end_matches(']'),
            port: port.parse().map_err(|_| format!("{port}: not a port"))?,
        }),
        None => Ok(Source::File),
    }
}

/// Prints the fingerprints of `file`, or of the chain `connect` presents.
pub async fn run_fingerprint(
    file: Option<&PathBuf>,
    connect: Option<&str>,
    starttls: Option<StartTls>,
    digest: Digest,
    pin: PinKind,
    format: Format,
    timeout: u64,
) -> Result<u8, String> {
    let (chain, source) = match (file, connect) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            let chain =
                Certificate::all_from_pem(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            (chain, None)
        }
        (None, Some(addr)) => {
            let proto = starttls.unwrap_or(StartTls::Implicit);
            let chain = probe::probe(addr, proto, std::time::Duration::from_secs(timeout))
                .await
                .map_err(|e| e.to_string())?;
            (chain, Some(addr))
        }
        (None, None) => return Err("give a PEM file or --connect HOST:PORT".into()),
    };
    let source = match source {
        Some(addr) => server(addr)?,
        None => Source::File,
    };
    let _ = write!(
        anstream::stdout(),
        "{}",
        fingerprint::render(&chain, digest, pin, format, &source)
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_the_json_format_and_refuses_another() {
        assert_eq!(format(None, false), Ok(Format::Text));
        assert_eq!(format(None, true), Ok(Format::Json));
        assert_eq!(format(Some(Format::Json), true), Ok(Format::Json));
        assert_eq!(format(Some(Format::Postfix), false), Ok(Format::Postfix));
        assert!(format(Some(Format::Postfix), true)
            .unwrap_err()
            .contains("--json is --format json"));
    }

    #[test]
    fn the_server_is_named_without_brackets() {
        assert!(matches!(
            server("mx.example.org:25"),
            Ok(Source::Server {
                host: "mx.example.org",
                port: 25
            })
        ));
        assert!(matches!(
            server("[::1]:465"),
            Ok(Source::Server {
                host: "::1",
                port: 465
            })
        ));
        assert_eq!(server("mx:smtp").err().as_deref(), Some("smtp: not a port"));
    }
}
