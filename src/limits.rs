//! Every limit and timeout of a run, in one place.

use std::time::Duration;

/// A TLS probe from the controller (a primary's SMTP port, an external
/// server): connect, STARTTLS and handshake.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long apply waits, after switching a host whose MTA takes up its
/// new key by itself (Exim's daemon, a few seconds later), for the
/// controller to see that key served before any pinner re-pins; and how
/// often it looks.
pub const SERVED_KEY_WAIT: Duration = Duration::from_secs(30);
pub const SERVED_KEY_POLL: Duration = Duration::from_millis(250);

/// Opening an SSH connection to a host.
pub const SSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// SSH keep-alive: a host silent for this long is asked whether it lives.
pub const SSH_ALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// How long the shell holding a host's lock may take to end once let go.
pub const LOCK_RELEASE_WAIT: Duration = Duration::from_secs(30);

/// How long a run waits for other runs to let go of its hosts, and how
/// long an apply script waits for another one on the same host, in seconds.
pub const LOCK_WAIT_SECS: u32 = 120;
