//! SIGTERM: stop accepting, drain open sessions up to drain_timeout, exit 0.

use std::path::Path;
use std::time::Duration;

use test_support::WAIT;
use test_support::backend::{Backend, read_banner};
use test_support::gateway::{Gateway, GatewayConfig, one_route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

/// Waits (bounded) until the gateway refuses new connections on `port`.
async fn wait_until_refusing(port: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a gateway with one session through it, and the session.
async fn gateway_with_session(backend: &Backend, drain: &str) -> (Gateway, TcpStream, u16) {
    let port = test_support::free_port();
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port}"), yaml(backend)).setting("drain_timeout", &format!("{drain:?}")),
    );
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    assert_eq!(read_banner(&mut s).await.expect("banner"), backend.name);
    (gw, s, port)
}

fn yaml(backend: &Backend) -> String {
    one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_an_open_session() {
    let backend = Backend::plain("drain").await;
    let (mut gw, mut s, port) = gateway_with_session(&backend, "20s").await;
    gw.terminate();
    // New sessions are no longer accepted...
    wait_until_refusing(port).await;
    // ...while the open one keeps working.
    for round in 0..3 {
        let msg = format!("round {round}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut back)).await.unwrap().unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    assert!(!gw.exited(), "exited while a session was open");
    drop(s);
    let status = gw.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status}");
    let lines = gw.log_lines();
    assert!(lines.iter().any(|l| l.contains("reason=\"client closed\"") && l.contains(" 200 ")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_closes_the_rest() {
    let backend = Backend::plain("stuck").await;
    let (mut gw, mut s, _) = gateway_with_session(&backend, "300ms").await;
    gw.terminate();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed by the gateway at drain_timeout");
    let status = gw.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status}");
    let lines = gw.log_lines();
    assert!(lines.iter().any(|l| l.contains("reason=\"shutdown\"")), "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_the_drain_short() {
    let backend = Backend::plain("long").await;
    let (mut gw, mut s, port) = gateway_with_session(&backend, "10m").await;
    gw.terminate();
    // Wait until the first signal was handled (the listener is closed).
    wait_until_refusing(port).await;
    gw.terminate();
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed by the second signal");
    assert!(gw.wait_exit(WAIT).await.success());
    assert!(gw.log_lines().iter().any(|l| l.contains("reason=\"shutdown\"")));
}
