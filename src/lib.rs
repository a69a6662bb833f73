//! mxpin: pin self-signed TLS keys between your own mail hosts.
//!
//! Data flows one way: [`inventory`] -> [`facts`] -> [`desired`] state ->
//! [`plan`] -> apply ([`engine`], with the scripts of [`mta`]) ->
//! [`verify`].

pub mod commands;
pub mod desired;
pub mod dns;
pub mod engine;
pub mod error;
pub mod external;
pub mod facts;
pub mod fetchmail;
pub mod fingerprint;
pub mod inventory;
pub mod keys;
pub mod limits;
pub mod manpage;
pub mod mta;
pub mod pins;
pub mod plan;
pub mod probe;
pub mod progress;
pub mod recipients;
pub mod render;
pub mod report;
pub mod shell;
pub mod ssh;
pub mod templates;
pub mod text;
pub mod tls;
pub mod trust;
pub mod verify;
pub mod words;
