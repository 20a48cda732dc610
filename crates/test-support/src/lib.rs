//! Test support for Strait's integration tests: rcgen certificates, tagged
//! echo backends (plain and TLS), TLS clients, a private Redis server, and
//! a harness that runs the real `strait` binary on loopback ports with
//! bounded waits, and a headless Chromium over WebDriver for the web UI.
//!
//! Not part of the product; only tests depend on it.

pub mod backend;
pub mod certs;
pub mod dns;
pub mod gateway;
pub mod http;
pub mod pg;
pub mod redis;
pub mod webdriver;

use std::time::Duration;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(15);

/// Ports handed out by [`free_port`]: below Linux's ephemeral range
/// (32768–60999), so no outgoing connection of a concurrent test can take
/// one between the check and the gateway's bind.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// A port free for both TCP and UDP on 127.0.0.1. Each call in a test
/// process gets a different one (a counter from a per-process start), so
/// tests running in parallel never pick the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(PORTS.end - PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = PORTS.start + (NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {PORTS:?}")
}
