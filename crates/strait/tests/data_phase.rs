//! The native data phase through the real binary: the worked example
//! (`redis-guard`) in front of a private Redis server with Redis's own
//! clients, a pass-through counting plugin on plain and TLS routes (bytes,
//! half-close, phases), and the `stream_max_pending` bound.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use test_support::backend::{Backend, read_banner, tls_connect};
use test_support::certs::{TestCa, client_config};
use test_support::gateway::{Gateway, GatewayConfig, certificate_yaml};
use test_support::redis::{RedisServer, resp};
use test_support::{WAIT, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::*;

/// Reads until `want` bytes arrived (bounded).
async fn read_n<S: AsyncReadExt + Unpin>(s: &mut S, want: usize) -> Vec<u8> {
    let mut buf = vec![0u8; want];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await.expect("in time").expect("read");
    buf
}

/// True once the gateway closed the connection (bounded).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut b)).await.expect("closed in time") {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// A gateway with `redis-guard` (and `extra` YAML under it) in front of
/// `redis`; its file-log entries go into the returned folder's file.
fn guard_gateway(
    redis: &RedisServer,
    port: u16,
    extra: &str,
    settings: &[(&str, &str)],
) -> (Gateway, test_support::gateway::TempDir, std::path::PathBuf) {
    let dir = test_support::gateway::TempDir::new();
    let (log_path, log_yaml) = file_log(dir.path());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: redis
  url: tcp://{}
  routes:
  - name: redis-route
    protocols: [tcp]
    destinations: [{{port: {port}}}]
    plugins:
    - name: redis-guard
{extra}
plugins:
{log_yaml}"#,
        redis.addr
    );
    let mut cfg = GatewayConfig::new(format!("127.0.0.1:{port}"), yaml).setting("plugins", "\"bundled,redis-guard\"");
    for (k, v) in settings {
        cfg = cfg.setting(k, v);
    }
    (Gateway::start(bin(), cfg), dir, log_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_guard_refuses_flushall_even_split_over_two_reads() {
    let redis = RedisServer::start();
    let port = free_port();
    let (gw, _dir, log_path) = guard_gateway(&redis, port, "", &[]);

    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    c.write_all(&resp(&["SET", "kept", "yes"])).await.expect("send SET");
    assert_eq!(read_n(&mut c, 5).await, b"+OK\r\n");
    // A command split anywhere is held until whole: here inside its name.
    let get = resp(&["GET", "kept"]);
    c.write_all(&get[..9]).await.expect("first half");
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.write_all(&get[9..]).await.expect("second half");
    assert_eq!(read_n(&mut c, 9).await, b"$3\r\nyes\r\n");
    // FLUSHALL, split in two: the session closes before any of it is sent.
    let flush = resp(&["FLUSHALL"]);
    c.write_all(&flush[..12]).await.expect("first half");
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.write_all(&flush[12..]).await.expect("second half");
    assert!(closed(&mut c).await, "the guard closes the session");
    assert_eq!(redis.command(&["GET", "kept"]).as_deref(), Some("$3\r\nyes\r\n"), "FLUSHALL never reached Redis");

    let line = gw.wait_log(&[" 200 ", "reason=\"closed by plugin\"", "detail=\"redis-guard\""]).await;
    assert!(line.contains("route=redis-route"), "{line}");
    let entry = wait_entry(&log_path, |e| e["redis_guard"]["denied"] == "FLUSHALL").await;
    assert_eq!(entry["redis_guard"]["commands"], 3, "SET, GET and FLUSHALL: {entry}");

    // Inline commands (as typed into telnet) too.
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    c.write_all(b"flushdb\r\n").await.expect("inline");
    assert!(closed(&mut c).await, "an inline FLUSHDB is refused too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_clients_work_through_the_guard_pipelined_or_not() {
    let redis = RedisServer::start();
    let port = free_port();
    let (gw, _dir, log_path) = guard_gateway(&redis, port, "      config: {deny: [flushall, debug]}", &[]);
    // redis-benchmark pipelines 16 commands per write: commands straddle
    // reads, and every one must be held until whole, then passed on.
    let out = Command::new("redis-benchmark")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-n",
            "2000",
            "-c",
            "4",
            "-P",
            "16",
            "-t",
            "set,get,lpush",
            "-q",
        ])
        .output()
        .expect("redis-benchmark must be installed (apt-get install redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "redis-benchmark failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    for t in ["SET", "GET", "LPUSH"] {
        assert!(text.contains(&format!("{t}:")), "no {t} result: {text}");
    }
    // redis-cli through the gateway: allowed commands answer, a denied one
    // ends the session (redis-cli reports the lost connection).
    let cli = |args: &[&str]| {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
        cmd.output().expect("redis-cli must be installed")
    };
    let set = cli(&["SET", "cli-key", "v1"]);
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "OK");
    let get = cli(&["GET", "cli-key"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "v1");
    let _ = cli(&["DEBUG", "SLEEP", "0"]);
    assert_eq!(redis.command(&["GET", "cli-key"]).as_deref(), Some("$2\r\nv1\r\n"));
    let denied = wait_entry(&log_path, |e| e["redis_guard"]["denied"] == "DEBUG").await;
    assert_eq!(denied["redis_guard"]["commands"], 1);
    // The configured list replaces the default: FLUSHDB is allowed here.
    assert_eq!(redis.command(&["SET", "gone", "soon"]).as_deref(), Some("+OK\r\n"));
    let flushdb = cli(&["FLUSHDB"]);
    assert_eq!(String::from_utf8_lossy(&flushdb.stdout).trim(), "OK");
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_held_past_stream_max_pending_close_the_session() {
    let redis = RedisServer::start();
    let port = free_port();
    let (gw, _dir, _) = guard_gateway(&redis, port, "", &[("stream_max_pending", "\"64k\"")]);
    // A bulk string the guard must hold whole before it can judge it.
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    c.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n").await.expect("header");
    let chunk = vec![b'x'; 16 * 1024];
    for _ in 0..8 {
        if c.write_all(&chunk).await.is_err() {
            break;
        }
    }
    assert!(closed(&mut c).await);
    let line = gw.wait_log(&[" 500 ", "reason=\"stream_max_pending exceeded\""]).await;
    assert!(line.contains("more than stream_max_pending (65536)"), "{line}");
    assert_eq!(redis.command(&["EXISTS", "k"]).as_deref(), Some(":0\r\n"), "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_through_data_phase_counts_every_byte_on_tcp_and_tls_with_half_close() {
    let ca = TestCa::new("data CA");
    let leaf = ca.leaf(&["data.test"]);
    let backend = Backend::plain("counted").await;
    let (p_tcp, p_tls) = (free_port(), free_port());
    let dir = test_support::gateway::TempDir::new();
    let (log_path, log_yaml) = file_log(dir.path());
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}services:
- name: svc
  url: tcp://{}
  routes:
  - name: tcp-route
    protocols: [tcp]
    destinations: [{{port: {p_tcp}}}]
  - name: tls-route
    protocols: [tls]
    snis: [data.test]
  plugins:
  - name: tag-session
    config: {{tag: counted, count_bytes: true}}
plugins:
{log_yaml}"#,
        certificate_yaml(&leaf, &["data.test"]),
        backend.addr
    );
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{p_tcp}, 127.0.0.1:{p_tls} ssl"), yaml)
            .setting("plugins", "\"bundled,tag-session\""),
    );
    // Plain: 100 KiB each way, then the client half-closes and still reads
    // everything the backend echoes, then the backend's close.
    let mut c = TcpStream::connect(addr(p_tcp)).await.expect("connect");
    assert_eq!(read_banner(&mut c).await.expect("banner"), "counted");
    let payload: Vec<u8> = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = c.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.expect("send");
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut back)).await.expect("in time").expect("read to the end");
    writer.await.expect("writer");
    assert_eq!(back, payload, "every byte echoed, and the backend's close came after them");
    let e = wait_entry(&log_path, |e| e["tag_session"]["tag"] == "counted" && e["route"]["name"] == "tcp-route").await;
    assert_eq!(e["tag_session"]["bytes"]["downstream"], payload.len());
    assert_eq!(e["tag_session"]["bytes"]["upstream"], payload.len() + "counted\n".len());
    let phases: Vec<&str> =
        e["tag_session"]["phases"].as_array().expect("phases").iter().filter_map(Value::as_str).collect();
    assert_eq!(phases, ["preread", "connect", "log"], "{e}");

    // TLS: the plugin sees the decrypted bytes.
    let mut t = tls_connect(addr(p_tls), "data.test", client_config(&ca)).await.expect("TLS");
    assert_eq!(read_banner(&mut t).await.expect("banner"), "counted");
    t.write_all(b"secret words").await.expect("send");
    let mut buf = [0u8; 12];
    tokio::time::timeout(WAIT, t.read_exact(&mut buf)).await.expect("in time").expect("echo");
    assert_eq!(&buf, b"secret words");
    drop(t);
    let e = wait_entry(&log_path, |e| e["tag_session"]["tag"] == "counted" && e["route"]["name"] == "tls-route").await;
    assert_eq!(e["tag_session"]["bytes"]["downstream"], 12, "plaintext, not TLS records: {e}");
    drop(gw);
}
