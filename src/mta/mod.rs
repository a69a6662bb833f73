//! MTA-specific code. Everything that knows Postfix lives in [`postfix`].

pub mod postfix;
