//! The error of one host at the engine boundary: which host, at which
//! stage of the flow, what kind of failure, and the one-line message.
//! Rendered once, by its `Display` (`host: message`); `--json` carries
//! the stage and kind beside the message.

use std::fmt;

use crate::inventory::HostName;

/// The stage of the flow a host failed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Connect,
    Facts,
    Plan,
    Apply,
    Verify,
}

/// What kind of failure it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// SSH could not reach the host, or the connection broke.
    Unreachable,
    /// Another mxpin run holds the host.
    Busy,
    /// The host answered, but what it said cannot be read.
    Unparsable,
    /// The host lacks what mxpin needs (root, Postfix, flock) or its
    /// configuration or the inventory asks for what mxpin refuses.
    Refused,
    /// The apply script failed (its message says whether files were
    /// restored).
    Failed,
    /// Not applied, because a host it depends on was not.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    pub host: HostName,
    pub stage: Stage,
    pub kind: ErrorKind,
    /// One line, without the host's name.
    pub message: String,
}

impl HostError {
    pub fn new(host: &HostName, stage: Stage, kind: ErrorKind, message: impl Into<String>) -> Self {
        HostError {
            host: host.clone(),
            stage,
            kind,
            message: message.into(),
        }
    }

    /// The error for `--json`: host, stage, kind and message.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "host": self.host,
            "stage": self.stage,
            "kind": self.kind,
            "error": self.message,
        })
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.host, self.message)
    }
}

impl std::error::Error for HostError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_host_and_message_once() {
        let e = HostError::new(
            &HostName::parse("vps").unwrap(),
            Stage::Connect,
            ErrorKind::Unreachable,
            "ssh: connection refused",
        );
        assert_eq!(e.to_string(), "vps: ssh: connection refused");
        let v = e.to_json();
        assert_eq!(v["stage"], "connect");
        assert_eq!(v["kind"], "unreachable");
        assert_eq!(v["error"], "ssh: connection refused");
    }
}
