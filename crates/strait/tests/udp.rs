//! UDP through the real binary: sessions per client address, replies to the
//! right client, balancing, idle expiry, the session cap, large datagrams.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use test_support::WAIT;
use test_support::backend::UdpBackend;
use test_support::gateway::{Gateway, GatewayConfig};
use tokio::net::UdpSocket;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

async fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.expect("bind client")
}

/// Sends `msg` to the gateway and returns the reply (bounded wait).
async fn ask(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    s.send_to(msg, to).await.expect("send");
    let mut buf = vec![0u8; 65_536];
    let (n, from) = tokio::time::timeout(WAIT, s.recv_from(&mut buf)).await.expect("a reply in time").expect("recv");
    assert_eq!(from, to, "the reply comes from the address the client sent to");
    buf.truncate(n);
    buf
}

/// One `udp` service towards `upstream` for clients on 127.0.0.1; `extra`
/// holds more service fields, as YAML lines.
fn from_localhost(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "services:\n- name: s\n  url: udp://{upstream}\n{extra}  routes: [{{protocols: [udp], sources: [{{ip: 127.0.0.1}}]}}]\n"
    )
}

fn gateway(port: u16, body: &str, settings: &[(&str, &str)]) -> Gateway {
    let yaml = format!("_format_version: \"3.0\"\n{body}");
    let mut cfg = GatewayConfig::new(format!("127.0.0.1:{port} udp"), yaml);
    for (k, v) in settings {
        cfg = cfg.setting(k, v);
    }
    Gateway::start(bin(), cfg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_clients_at_once_get_their_own_replies_across_targets() {
    let (a, b) = (UdpBackend::start("a").await, UdpBackend::start("b").await);
    let port = test_support::free_port();
    let body = format!(
        r#"upstreams:
- name: dns-pool
  targets: [{{target: "{a}"}}, {{target: "{b}"}}]
services:
- name: dns
  url: udp://dns-pool:53
  routes: [{{protocols: [udp], destinations: [{{port: {port}}}]}}]
"#,
        a = a.addr,
        b = b.addr
    );
    let _gw = gateway(port, &body, &[]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let clients: Vec<UdpSocket> = futures_join(4).await;
    let mut tasks = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut served = None;
            for j in 0..5 {
                let msg = format!("client {i} message {j}");
                let reply = String::from_utf8(ask(&c, to, msg.as_bytes()).await).unwrap();
                let (name, echoed) = reply.split_once(':').unwrap();
                assert_eq!(echoed, msg, "a reply reached the wrong client");
                // One client, one session, one upstream.
                assert!(served.is_none_or(|s| s == name), "client {i} moved between targets");
                served = Some(name.to_owned());
            }
            served.unwrap()
        }));
    }
    let mut names = Vec::new();
    for t in tasks {
        names.push(t.await.unwrap());
    }
    assert!(names.contains(&"a".to_owned()) && names.contains(&"b".to_owned()), "{names:?}");
}

async fn futures_join(n: usize) -> Vec<UdpSocket> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(client().await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_when_idle_and_are_logged() {
    let a = UdpBackend::start("a").await;
    let port = test_support::free_port();
    let body = from_localhost(a.addr, "  read_timeout: 300\n");
    let gw = gateway(port, &body, &[]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = client().await;
    assert_eq!(ask(&c, to, b"one").await, b"a:one");
    assert_eq!(ask(&c, to, b"two").await, b"a:two");
    let line = gw.wait_log(&["UDP 200", "reason=\"idle timeout\""]).await;
    assert!(line.contains("datagrams=2/2") && line.contains("protocol=udp"), "{line}");
    assert!(line.contains(" 10 6 "), "bytes sent to / received from the client: {line}");
    // A client no route matches: nothing forwarded, logged 500.
    let stranger = UdpSocket::bind("127.0.0.5:0").await.unwrap();
    stranger.send_to(b"z", to).await.unwrap();
    let line = gw.wait_log(&["127.0.0.5:", "UDP 500", "no route"]).await;
    assert!(line.contains("datagrams=1/0"), "{line}");
    // After expiry the same client starts a new session.
    assert_eq!(ask(&c, to, b"three").await, b"a:three");
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.log_lines().len() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "the second session was never logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_keeps_a_session_past_its_idle_timeout() {
    let a = UdpBackend::start("a").await;
    let port = test_support::free_port();
    let body = from_localhost(a.addr, "  read_timeout: 300\n");
    let gw = gateway(port, &body, &[]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = client().await;
    // Six exchanges 100 ms apart: 500 ms in all, never 300 ms idle.
    for i in 0..6u8 {
        assert_eq!(ask(&c, to, &[b'0' + i]).await, [b'a', b':', b'0' + i]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = gw.wait_log(&["UDP 200", "reason=\"idle timeout\""]).await;
    assert!(line.contains("datagrams=6/6"), "one session for all six: {line}");
    assert_eq!(gw.log_lines().len(), 1, "{:?}", gw.log_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_datagrams_the_cap_and_unrouted_clients() {
    let a = UdpBackend::start("a").await;
    let port = test_support::free_port();
    let body = from_localhost(a.addr, "");
    let gw = gateway(port, &body, &[("udp_max_sessions", "2")]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (c1, c2, c3) = (client().await, client().await, client().await);
    // The largest datagram whose answer (with the backend's 2-byte prefix)
    // is still the largest IPv4 UDP payload, 65,507 bytes.
    let big: Vec<u8> = (0..65_505u32).map(|i| (i % 251) as u8).collect();
    let reply = ask(&c1, to, &big).await;
    assert_eq!(&reply[..2], b"a:");
    assert_eq!(&reply[2..], big.as_slice());
    assert_eq!(ask(&c2, to, b"x").await, b"a:x");
    // A third client over the cap: no session, no reply, a warning.
    c3.send_to(b"y", to).await.unwrap();
    let mut buf = [0u8; 16];
    assert!(tokio::time::timeout(Duration::from_millis(500), c3.recv_from(&mut buf)).await.is_err());
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gw.stderr().contains("udp_max_sessions reached") {
        assert!(tokio::time::Instant::now() < deadline, "no refusal logged:\n{}", gw.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_end_at_shutdown() {
    let a = UdpBackend::start("a").await;
    let port = test_support::free_port();
    let body = from_localhost(a.addr, "");
    let mut gw = gateway(port, &body, &[]);
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let c = client().await;
    assert_eq!(ask(&c, to, b"hi").await, b"a:hi");
    gw.terminate();
    // The session (idle timeout 60 s) does not hold the drain (30 s).
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    let lines = gw.log_lines();
    assert!(lines.iter().any(|l| l.contains("UDP 200") && l.contains("reason=\"shutdown\"")), "{lines:#?}");
}
