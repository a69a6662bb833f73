//! mxpin: pin self-signed TLS keys between your own mail hosts.
//!
//! Data flows one way: [`inventory`] -> [`facts`] -> [`desired`] state ->
//! [`plan`] -> apply ([`engine`], with the scripts of [`mta`]).

pub mod desired;
pub mod engine;
pub mod external;
pub mod facts;
pub mod fetchmail;
pub mod fingerprint;
pub mod inventory;
pub mod keys;
pub mod mta;
pub mod plan;
pub mod probe;
pub mod progress;
pub mod shell;
pub mod ssh;
pub mod templates;
pub mod text;
pub mod tls;
pub mod trust;
pub mod words;
