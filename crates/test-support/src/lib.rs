//! Test support for Strait's integration tests: rcgen certificates, tagged
//! echo backends (plain and TLS), TLS clients, and a harness that runs the
//! real `strait` binary on loopback ports with bounded waits.
//!
//! Not part of the product; only tests depend on it.

pub mod backend;
pub mod certs;
pub mod dns;
pub mod gateway;
pub mod http;

use std::time::Duration;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(15);

/// A free TCP port on 127.0.0.1 (bound and released; good enough on a test box).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}
