//! The live probe: connect to a server, speak STARTTLS (SMTP, IMAP, POP3)
//! or implicit TLS, and record the certificate chain it presents.
//!
//! Nothing is trusted or rejected on the chain itself (the point is to
//! learn what is served), but the handshake signature is still verified
//! against the presented certificate, so the peer proved it holds the key.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::tls::{Certificate, TlsError};

/// How TLS starts on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// TLS from the first byte (465, 993, 995).
    Implicit,
    Smtp,
    Imap,
    Pop3,
}

impl std::str::FromStr for StartTls {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "smtp" => Ok(StartTls::Smtp),
            "imap" => Ok(StartTls::Imap),
            "pop3" => Ok(StartTls::Pop3),
            _ => Err(format!(
                "unknown protocol {s:?}: expected smtp, imap or pop3"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}: invalid address, expected HOST:PORT")]
    Address(String),
    #[error("{addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("{addr}: timed out after {secs} s while {step}")]
    Timeout {
        addr: String,
        secs: u64,
        step: &'static str,
    },
    #[error("{addr}: {0}", addr = .1)]
    Protocol(String, String),
    #[error("{addr}: TLS handshake failed: {message}")]
    Tls { addr: String, message: String },
    #[error("{addr}: the server sent no certificate")]
    NoCertificate { addr: String },
    #[error("{addr}: certificate {index}: {source}")]
    Certificate {
        addr: String,
        index: usize,
        source: TlsError,
    },
}

/// Records the chain; checks only the handshake signatures.
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<Vec<u8>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = self.chain.lock().expect("not poisoned");
        chain.push(end_entity.to_vec());
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads one protocol reply: for SMTP the whole multi-line reply.
async fn reply<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    smtp: bool,
) -> std::io::Result<Vec<String>> {
    let mut lines = Vec::new();
    // Bounded: no sane greeting or EHLO reply has more lines.
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            break;
        }
        let line = line.trim_end().to_string();
        let more = smtp && line.as_bytes().get(3) == Some(&b'-');
        lines.push(line);
        if !more {
            break;
        }
    }
    Ok(lines)
}

/// Speaks the plain-text part of STARTTLS. `Err(message)` for a server that
/// refuses or does not offer it.
async fn starttls(stream: &mut TcpStream, proto: StartTls) -> Result<(), String> {
    if proto == StartTls::Implicit {
        return Ok(());
    }
    let io_err = |e: std::io::Error| format!("connection failed: {e}");
    let mut r = BufReader::new(stream);
    let smtp = proto == StartTls::Smtp;
    let first = |l: &[String]| l.first().cloned().unwrap_or_default();
    let greeting = reply(&mut r, smtp).await.map_err(io_err)?;
    let ok = |l: &[String], prefix: &str| l.last().is_some_and(|x| x.starts_with(prefix));
    match proto {
        StartTls::Smtp => {
            if !ok(&greeting, "220") {
                return Err(format!("not an SMTP greeting: {:?}", first(&greeting)));
            }
            r.get_mut()
                .write_all(b"EHLO mxpin.invalid\r\n")
                .await
                .map_err(io_err)?;
            let ehlo = reply(&mut r, true).await.map_err(io_err)?;
            if !ehlo.iter().any(|l| {
                l.get(4..)
                    .is_some_and(|x| x.eq_ignore_ascii_case("STARTTLS"))
            }) {
                return Err("the server does not offer STARTTLS".into());
            }
            r.get_mut()
                .write_all(b"STARTTLS\r\n")
                .await
                .map_err(io_err)?;
            let go = reply(&mut r, true).await.map_err(io_err)?;
            if !ok(&go, "220") {
                return Err(format!("STARTTLS refused: {:?}", first(&go)));
            }
        }
        StartTls::Imap => {
            if !ok(&greeting, "* OK") {
                return Err(format!("not an IMAP greeting: {:?}", first(&greeting)));
            }
            r.get_mut()
                .write_all(b"a1 STARTTLS\r\n")
                .await
                .map_err(io_err)?;
            let go = reply(&mut r, false).await.map_err(io_err)?;
            if !ok(&go, "a1 OK") {
                return Err(format!("STARTTLS refused: {:?}", first(&go)));
            }
        }
        StartTls::Pop3 => {
            if !ok(&greeting, "+OK") {
                return Err(format!("not a POP3 greeting: {:?}", first(&greeting)));
            }
            r.get_mut().write_all(b"STLS\r\n").await.map_err(io_err)?;
            let go = reply(&mut r, false).await.map_err(io_err)?;
            if !ok(&go, "+OK") {
                return Err(format!("STLS refused: {:?}", first(&go)));
            }
        }
        StartTls::Implicit => unreachable!("returned above"),
    }
    // A server must not send anything before the handshake; bytes left in
    // the buffer would be lost to TLS.
    if !r.buffer().is_empty() {
        return Err("the server sent data after agreeing to start TLS".into());
    }
    Ok(())
}

/// Connects to `addr` (`host:port` or `[v6]:port`) and returns the chain
/// the server presents, leaf first.
pub async fn probe(
    addr: &str,
    proto: StartTls,
    timeout: Duration,
) -> Result<Vec<Certificate>, ProbeError> {
    probe_named(addr, proto, timeout, None).await
}

/// [`probe`], asking for `server_name` by SNI (default: the host of
/// `addr`, as any client would).
pub async fn probe_named(
    addr: &str,
    proto: StartTls,
    timeout: Duration,
    server_name: Option<&str>,
) -> Result<Vec<Certificate>, ProbeError> {
    let (host, _port) = addr
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        .ok_or_else(|| ProbeError::Address(addr.to_string()))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let secs = timeout.as_secs();
    let timed = |step| ProbeError::Timeout {
        addr: addr.to_string(),
        secs,
        step,
    };
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| timed("connecting"))?
        .map_err(|e| ProbeError::Connect {
            addr: addr.to_string(),
            message: e.to_string(),
        })?;
    tokio::time::timeout(timeout, starttls(&mut stream, proto))
        .await
        .map_err(|_| timed("starting TLS"))?
        .map_err(|m| ProbeError::Protocol(m, addr.to_string()))?;

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let recorder = Arc::new(Recorder {
        chain: Mutex::new(Vec::new()),
        provider: provider.clone(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls {
            addr: addr.to_string(),
            message: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.map_or(host.clone(), str::to_string))
        .or_else(|_| ServerName::try_from("invalid.invalid".to_string()))
        .expect("a valid fallback name");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = tokio::time::timeout(timeout, connector.connect(name, stream))
        .await
        .map_err(|_| timed("in the TLS handshake"))?
        .map_err(|e| {
            let hint = if proto == StartTls::Implicit && e.to_string().contains("InvalidContentType") {
                " (the server does not speak TLS at once: if it uses STARTTLS, add --starttls smtp, imap or pop3)"
            } else {
                ""
            };
            ProbeError::Tls {
                addr: addr.to_string(),
                message: format!("{e}{hint}"),
            }
        })?;
    let _ = tls.shutdown().await;
    let chain = recorder.chain.lock().expect("not poisoned").clone();
    if chain.is_empty() {
        return Err(ProbeError::NoCertificate {
            addr: addr.to_string(),
        });
    }
    chain
        .into_iter()
        .enumerate()
        .map(|(index, der)| {
            Certificate::from_der_bytes(der).map_err(|source| ProbeError::Certificate {
                addr: addr.to_string(),
                index,
                source,
            })
        })
        .collect()
}
