//! Routing and relaying plain TCP sessions through the real binary.

use std::path::Path;
use std::time::Duration;

use test_support::WAIT;
use test_support::backend::{Backend, closed_without_data, connect_from, read_banner};
use test_support::gateway::{Gateway, GatewayConfig, one_route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

async fn banner_via(from: &str, to: std::net::SocketAddr) -> String {
    let mut s = connect_from(from, to).await;
    read_banner(&mut s).await.expect("banner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_destination_ip_and_port_most_specific_first() {
    let a = Backend::plain("a").await;
    let b = Backend::plain("b").await;
    let c = Backend::plain("c").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: a
  url: tcp://{a}
  routes:
  - name: by-port
    protocols: [tcp]
    destinations: [{{port: {port}}}]
- name: b
  url: tcp://{b}
  routes:
  - name: by-ip-and-port
    protocols: [tcp]
    destinations: [{{ip: 127.0.0.2, port: {port}}}]
- name: c
  url: tcp://{c}
  routes:
  - name: by-cidr
    protocols: [tcp]
    destinations: [{{ip: 127.0.0.0/8}}]
"#,
        a = a.addr,
        b = b.addr,
        c = c.addr
    );
    let other = test_support::free_port();
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port}, 127.0.0.2:{port}, 127.0.0.1:{other}"), yaml),
    );
    let to = |ip: &str, p: u16| format!("{ip}:{p}").parse().unwrap();
    assert_eq!(banner_via("127.0.0.1", to("127.0.0.1", port)).await, "a");
    assert_eq!(banner_via("127.0.0.1", to("127.0.0.2", port)).await, "b", "ip+port beats port");
    assert_eq!(banner_via("127.0.0.1", to("127.0.0.1", other)).await, "c", "CIDR catches the rest");
    gw.wait_log(&["route=by-ip-and-port", "service=b", "listener=127.0.0.2:"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_source_cidr_longest_prefix_wins() {
    let wide = Backend::plain("wide").await;
    let narrow = Backend::plain("narrow").await;
    let exact = Backend::plain("exact").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: wide
  url: tcp://{}
  routes:
  - protocols: [tcp]
    sources: [{{ip: 127.0.0.0/8}}]
- name: narrow
  url: tcp://{}
  routes:
  - protocols: [tcp]
    sources: [{{ip: 127.0.5.0/24}}]
- name: exact
  url: tcp://{}
  routes:
  - protocols: [tcp]
    sources: [{{ip: 127.0.5.9}}]
"#,
        wide.addr, narrow.addr, exact.addr
    );
    let _gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(banner_via("127.0.0.1", to).await, "wide");
    assert_eq!(banner_via("127.0.5.1", to).await, "narrow");
    assert_eq!(banner_via("127.0.5.9", to).await, "exact", "an exact IP outranks CIDRs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_closes_without_a_byte_and_logs_500() {
    let a = Backend::plain("a").await;
    let port = test_support::free_port();
    let yaml = one_route(a.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.9.9.9}]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut s = connect_from("127.0.0.1", format!("127.0.0.1:{port}").parse().unwrap()).await;
    assert!(closed_without_data(&mut s).await);
    let line = gw.wait_log(&[" 500 ", "reason=\"no route\""]).await;
    assert!(line.starts_with("127.0.0.1:"), "{line}");
    assert_eq!(a.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_closes_promptly_with_502() {
    // A port nobody listens on: connections are refused at once.
    let dead = test_support::free_port();
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: down
  url: tcp://127.0.0.1:{dead}
  retries: 2
  routes:
  - protocols: [tcp]
    destinations: [{{port: {port}}}]
"#
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // Bounded by WAIT inside: the session must end, not hang.
    assert!(closed_without_data(&mut s).await);
    let line = gw.wait_log(&[" 502 ", "reason=\"connect failed\""]).await;
    assert!(line.contains("tries=3"), "1 try + 2 retries: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_speaks_first_through_a_tcp_route() {
    // The backend sends its banner before the client says anything; the
    // gateway must connect upstream without waiting for client bytes.
    let smtp_like = Backend::plain("220 ready").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{}
  routes:
  - protocols: [tcp]
    destinations: [{{port: {port}}}]
  - protocols: [tls]
    snis: [elsewhere.test]
    destinations: [{{port: 1}}]
"#,
        smtp_like.addr
    );
    let _gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "220 ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_each_way_with_half_close() {
    let echo = Backend::plain("echo").await;
    let port = test_support::free_port();
    let yaml = one_route(echo.addr, &[], &["protocols: [tcp]", &format!("destinations: [{{port: {port}}}]")]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    const SIZE: usize = 64 * 1024 * 1024;
    let pattern = |i: usize| (i.wrapping_mul(2_654_435_761) >> 7) as u8;
    let writer = tokio::spawn(async move {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut sent = 0;
        while sent < SIZE {
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = pattern(sent + j);
            }
            wr.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
        // Half-close: the echo backend sees EOF only if the gateway forwards it.
        wr.shutdown().await.unwrap();
        wr
    });
    let reader = tokio::spawn(async move {
        let mut banner = [0u8; 5];
        rd.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"echo\n");
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let n = rd.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            for (j, b) in buf[..n].iter().enumerate() {
                assert_eq!(*b, pattern(got + j), "byte {} differs", got + j);
            }
            got += n;
        }
        got
    });
    let got = tokio::time::timeout(Duration::from_secs(120), reader).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    assert_eq!(got, SIZE, "everything came back and then the upstream's FIN");
    let line = gw.wait_log(&["reason=\"client closed\""]).await;
    assert!(line.contains(&format!(" 200 {} {} ", SIZE + 5, SIZE)), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_stream_listen() {
    let a = Backend::plain("from-env").await;
    let file_port = test_support::free_port();
    let env_port = test_support::free_port();
    let yaml = one_route(a.addr, &[], &["protocols: [tcp]", "sources: [{ip: 0.0.0.0/0}]"]);
    let _gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{file_port}"), yaml)
            .env("STRAIT_STREAM_LISTEN", &format!("127.0.0.1:{env_port} reuseport backlog=64")),
    );
    let mut s = TcpStream::connect(("127.0.0.1", env_port)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "from-env");
    assert!(TcpStream::connect(("127.0.0.1", file_port)).await.is_err(), "the file's stream_listen was overridden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_is_max_of_read_and_write_timeouts() {
    let a = Backend::plain("idle").await;
    let port = test_support::free_port();
    let yaml = one_route(
        a.addr,
        &["read_timeout: 300", "write_timeout: 600"],
        &["protocols: [tcp]", &format!("destinations: [{{port: {port}}}]")],
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "idle");
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut b)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "closed by the idle timeout");
    let line = gw.wait_log(&["reason=\"idle timeout\""]).await;
    let secs: f64 = line.split_whitespace().nth(7).unwrap().parse().unwrap();
    assert!(secs >= 0.6, "not before max(read, write) = 600 ms: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listener_and_routes_beside_ipv4_on_the_same_port() {
    let v4 = Backend::plain("v4").await;
    let v6 = Backend::plain("v6").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{}
  routes:
  - protocols: [tcp]
    sources: [{{ip: 127.0.0.0/8}}]
- url: tcp://{}
  routes:
  - protocols: [tcp]
    sources: [{{ip: "::1/128"}}]
    destinations: [{{ip: "::1", port: {port}}}]
"#,
        v4.addr, v6.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}, [::1]:{port} ipv6only=on"), yaml));
    let mut a = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(read_banner(&mut a).await.unwrap(), "v4");
    let mut b = TcpStream::connect(("::1", port)).await.unwrap();
    assert_eq!(read_banner(&mut b).await.unwrap(), "v6");
    drop(b);
    gw.wait_log(&["[::1]:", &format!("listener=[::1]:{port}")]).await;
}
