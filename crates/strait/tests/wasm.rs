//! Proxy-wasm network filters through the real binary: modules built from
//! `tests/wasm/` with a public SDK (AssemblyScript) and C, and WAT written
//! here for the edge cases. Bytes changed both ways, held until a whole
//! message, a pattern split across reads, properties and metrics, shared
//! data across instances, a pause before the upstream connect; traps,
//! deadlines and the memory cap; refused modules; `tls` and
//! `tls_passthrough` routes, and plaintext before upstream TLS; filter chains through the Admin API and
//! declarative files with Kong's messages.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::backend::{Backend, read_banner, tls_connect};
use test_support::certs::{TestCa, client_config, server_config};
use test_support::gateway::{Gateway, GatewayConfig, TempDir, certificate_yaml};
use test_support::http::{get, request, send_json};
use test_support::{WAIT, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;
use common::*;

/// The committed test filters (see `tests/wasm/build.sh`).
fn built(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/wasm").join(name)
}

/// A `wasm_filters_path` with the named built filters (and their metadata).
fn filters(names: &[&str]) -> TempDir {
    let dir = TempDir::new();
    for n in names {
        std::fs::copy(built(&format!("out/{n}.wasm")), dir.path().join(format!("{n}.wasm"))).expect("copy a filter");
        let meta = built(&format!("meta/{n}.meta.json"));
        if meta.exists() {
            std::fs::copy(meta, dir.path().join(format!("{n}.meta.json"))).expect("copy metadata");
        }
    }
    dir
}

/// Adds a filter written in WAT.
fn wat_filter(dir: &TempDir, name: &str, wat: &str) {
    let bytes = wat::parse_str(wat).expect("valid WAT");
    std::fs::write(dir.path().join(format!("{name}.wasm")), bytes).expect("write a filter");
}

/// A WAT filter: memory, a bump allocator, the 0.2.1 marker, the context
/// callback, and `body` (more imports and exports).
fn wat_module(body: &str) -> String {
    format!(
        r#"(module
  (import "env" "proxy_get_buffer_bytes" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    global.get $top local.set $p
    global.get $top local.get $n i32.add global.set $top
    local.get $p)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  {body})"#
    )
}

/// Traps on client bytes that start with "b" ("boom"); others pass.
const TRAP: &str = r#"(func (export "proxy_on_downstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $size)) (then (return (i32.const 0))))
    (drop (call $get (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 0) (i32.const 4)))
    (if (i32.eq (i32.load8_u (i32.load (i32.const 0))) (i32.const 98)) (then unreachable))
    (i32.const 0))"#;
/// Never returns from a data callback.
const LOOP: &str = r#"(func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
    (loop $forever (br $forever))
    (i32.const 0))"#;
/// Grows its memory until it may not.
const HOG: &str = r#"(func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32)
    (loop $more (drop (memory.grow (i32.const 16))) (br $more))
    (i32.const 0))"#;

/// Settings that turn Wasm on with `dir` as the filters' folder.
fn with_wasm(cfg: GatewayConfig, dir: &TempDir) -> GatewayConfig {
    cfg.setting("wasm", "\"on\"").setting("wasm_filters_path", &format!("{:?}", dir.path()))
}

/// A backend that sends `banner` when a client connects and records what
/// it receives.
struct Recorder {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<u8>>>,
    accepted: Arc<Mutex<usize>>,
}

impl Recorder {
    async fn start(banner: &'static [u8]) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(Mutex::new(0));
        let (g, a) = (got.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                *a.lock().expect("count") += 1;
                let g = g.clone();
                tokio::spawn(async move {
                    if s.write_all(banner).await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        g.lock().expect("record").extend_from_slice(&buf[..n]);
                    }
                });
            }
        });
        Recorder { addr, got, accepted }
    }

    fn got(&self) -> Vec<u8> {
        self.got.lock().expect("record").clone()
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().expect("count")
    }

    /// Waits (bounded) until the backend received `want`.
    async fn wait_for(&self, want: &[u8]) {
        let deadline = Instant::now() + WAIT;
        while !self.got().windows(want.len().max(1)).any(|w| w == want) {
            assert!(
                Instant::now() < deadline,
                "the backend never received {:?}; it has {:?}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&self.got())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One service at `url` with one `tcp` route on `port` (named `route`, when
/// given) whose filter chain runs `filter` (YAML flow text: `{name: x}`).
fn one_route(url: impl std::fmt::Display, port: u16, route: Option<&str>, filter: &str) -> String {
    let name = route.map(|r| format!("name: {r}\n    ")).unwrap_or_default();
    format!(
        "_format_version: \"3.0\"\nservices:\n- url: {url}\n  routes:\n  - {name}protocols: [tcp]\n    destinations: [{{port: {port}}}]\n    filter_chains:\n    - filters: [{filter}]\n"
    )
}

async fn read_exactly<S: AsyncReadExt + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await.expect("in time").expect("read");
    buf
}

/// True once the gateway closed the connection (bounded).
async fn closed<S: AsyncReadExt + Unpin>(s: &mut S) -> bool {
    let mut b = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut b)).await.expect("closed in time") {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// Waits (bounded) until the gateway's stderr holds every needle.
async fn wait_stderr(gw: &Gateway, needles: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = gw.stderr();
        if let Some(l) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return l.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line with {needles:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_changes_the_bytes_both_ways_on_tcp_and_tls_routes() {
    let ca = TestCa::new("wasm CA");
    let leaf = ca.leaf(&["wasm.test"]);
    let backend = Recorder::start(b"REPLY From Backend\n").await;
    let (p_tcp, p_tls) = (free_port(), free_port());
    let dir = filters(&["transform"]);
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
    filter_chains:
    - filters: [{{name: transform}}]
  - name: tls-route
    protocols: [tls]
    snis: [wasm.test]
    filter_chains:
    - name: tls-chain
      filters: [{{name: transform}}]
"#,
        certificate_yaml(&leaf, &["wasm.test"]),
        backend.addr
    );
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{p_tcp}, 127.0.0.1:{p_tls} ssl"), yaml), &dir),
    );
    let mut c = TcpStream::connect(addr(p_tcp)).await.expect("connect");
    assert_eq!(read_exactly(&mut c, 19).await, b"reply from backend\n", "the upstream's bytes, lowered");
    c.write_all(b"Hello, World").await.expect("send");
    backend.wait_for(b"HELLO, WORLD").await;
    drop(c);

    let mut t = tls_connect(addr(p_tls), "wasm.test", client_config(&ca)).await.expect("TLS");
    assert_eq!(read_exactly(&mut t, 19).await, b"reply from backend\n");
    t.write_all(b"over tls").await.expect("send");
    backend.wait_for(b"OVER TLS").await;
    drop(t);
    gw.wait_log(&["route=tls-route", "reason=\"client closed\""]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_sees_plaintext_before_upstream_tls() {
    // Were the filter given the TLS records, changing their case would break
    // the upstream handshake: a banner and an echo through it prove it sees
    // the plaintext both ways.
    let ca = TestCa::new("upstream CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let backend = Backend::tls("Secret-Backend", server_config(&leaf, None)).await;
    let port = free_port();
    let dir = filters(&["transform"]);
    let yaml = one_route(format!("tls://{}", backend.addr), port, Some("to-tls"), "{name: transform}");
    let gw = Gateway::start(bin(), with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir));
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    assert_eq!(read_exactly(&mut c, 15).await, b"secret-backend\n", "the upstream's plaintext, lowered");
    c.write_all(b"MiXeD case").await.expect("send");
    assert_eq!(read_exactly(&mut c, 10).await, b"mixed case", "upper-cased up, echoed, lowered down");
    drop(c);
    gw.wait_log(&["route=to-tls", "reason=\"client closed\""]).await;
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_holds_bytes_until_a_whole_line_arrived() {
    let backend = Recorder::start(b"").await;
    let port = free_port();
    let dir = filters(&["waitnl"]);
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n- url: tcp://{}\n  routes:\n  - protocols: [tcp]\n    destinations: [{{port: {port}}}]\n  filter_chains:\n  - filters: [{{name: waitnl}}]\n",
        backend.addr
    );
    let gw = Gateway::start(bin(), with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir));
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    c.write_all(b"hel").await.expect("first part");
    wait_stderr(&gw, &["waitnl: holding 3 bytes"]).await;
    c.write_all(b"lo").await.expect("second part");
    wait_stderr(&gw, &["waitnl: holding 5 bytes"]).await;
    assert!(backend.got().is_empty(), "nothing goes upstream before the line is whole");
    c.write_all(b" world\nnext").await.expect("the rest of the line");
    backend.wait_for(b"hello world\nnext").await;
    wait_stderr(&gw, &["waitnl: a line of 16 bytes"]).await;
    // Once the line is through, bytes flow as they come.
    c.write_all(b" more").await.expect("more");
    backend.wait_for(b"next more").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_closes_on_a_pattern_split_across_two_reads() {
    let backend = Recorder::start(b"").await;
    let port = free_port();
    let dir = filters(&["closeon"]);
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{}
  routes:
  - name: guarded
    protocols: [tcp]
    destinations: [{{port: {port}}}]
    filter_chains:
    - filters:
      - name: closeon
        config: "DROP TABLE"
"#,
        backend.addr
    );
    let gw = Gateway::start(bin(), with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir));
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    c.write_all(b"SELECT 1; ").await.expect("harmless");
    backend.wait_for(b"SELECT 1; ").await;
    c.write_all(b"DROP TA").await.expect("first half");
    backend.wait_for(b"DROP TA").await;
    c.write_all(b"BLE users;").await.expect("second half");
    assert!(closed(&mut c).await, "the filter closes the session");
    let line = gw.wait_log(&["route=guarded", "reason=\"closed by plugin\"", "detail=\"closeon\""]).await;
    assert!(line.contains(" 200 "), "{line}");
    assert!(!String::from_utf8_lossy(&backend.got()).contains("BLE"), "the rest never went upstream");
    wait_stderr(&gw, &["closeon: pattern seen, closing"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_reads_properties_logs_them_and_counts_on_metrics() {
    let ca = TestCa::new("props CA");
    let leaf = ca.leaf(&["props.test"]);
    let backend = Backend::plain("props-backend").await;
    let (p_tcp, p_tls, admin) = (free_port(), free_port(), free_port());
    let dir = filters(&["props"]);
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}services:
- name: props-svc
  url: tcp://{}
  filter_chains:
  - filters:
    - name: props
      config: {{tag: first}}
  routes:
  - name: props-tcp
    protocols: [tcp]
    destinations: [{{port: {p_tcp}}}]
  - name: props-tls
    protocols: [tls]
    snis: [props.test]
"#,
        certificate_yaml(&leaf, &["props.test"]),
        backend.addr
    );
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{p_tcp}, 127.0.0.1:{p_tls} ssl"), yaml), &dir)
            .setting("admin_listen", &format!("\"127.0.0.1:{admin}\"")),
    );
    let mut c = TcpStream::connect(addr(p_tcp)).await.expect("connect");
    let local = c.local_addr().expect("local");
    assert_eq!(read_banner(&mut c).await.expect("banner"), "props-backend");
    c.write_all(b"12345").await.expect("send");
    assert_eq!(read_exactly(&mut c, 5).await, b"12345");
    let line = wait_stderr(&gw, &["props tag=first", &format!("source={local}")]).await;
    for part in [
        "sni=-",
        "tls=-",
        "route=props-tcp",
        "service=props-svc",
        "protocol=tcp",
        "plugin=props",
        &format!("destination=127.0.0.1:{p_tcp}"),
    ] {
        assert!(line.contains(part), "{part} in {line}");
    }
    assert!(line.contains("filter=\"props\"") || line.contains("filter=props"), "the log names the filter: {line}");
    wait_stderr(&gw, &[&format!("props upstream={}", backend.addr)]).await;
    drop(c);
    wait_stderr(&gw, &["props closed peer=2"]).await;

    let mut t = tls_connect(addr(p_tls), "props.test", client_config(&ca)).await.expect("TLS");
    assert_eq!(read_banner(&mut t).await.expect("banner"), "props-backend");
    let line = wait_stderr(&gw, &["props tag=first", "route=props-tls"]).await;
    assert!(line.contains("sni=props.test") && line.contains("protocol=tls") && line.contains("tls=TLSv1.3"), "{line}");
    t.write_all(b"abc").await.expect("send");
    assert_eq!(read_exactly(&mut t, 3).await, b"abc");

    let deadline = Instant::now() + WAIT;
    loop {
        let m = String::from_utf8_lossy(&get(addr(admin), "/metrics").await.body).into_owned();
        if m.contains("strait_wasm_props_connections_total 2\n") && m.contains("strait_wasm_props_open 1\n") {
            assert!(m.contains("# TYPE strait_wasm_props_connections_total counter"), "{m}");
            assert!(m.contains("strait_wasm_props_chunk_bytes_count 2\n"), "{m}");
            assert!(m.contains("strait_wasm_props_chunk_bytes_sum 8\n"), "{m}");
            break;
        }
        assert!(Instant::now() < deadline, "the filter's metrics never showed:\n{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_data_counts_sessions_across_instances() {
    let backend = Recorder::start(b"").await;
    let port = free_port();
    let dir = filters(&["shared"]);
    let yaml = one_route(format!("tcp://{}", backend.addr), port, None, "{name: shared, config: sessions}");
    // Two workers: two instances of the filter, sessions spread over both.
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir).setting("worker_threads", "2"),
    );
    for i in 1..=4 {
        let mut c = TcpStream::connect(addr(port)).await.expect("connect");
        c.write_all(format!("session {i};").as_bytes()).await.expect("send");
        backend.wait_for(format!("n={i}\nsession {i};").as_bytes()).await;
    }
    for i in 1..=4 {
        wait_stderr(&gw, &[&format!("shared: dequeued n={i}")]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_in_new_connection_holds_the_upstream_connect_until_the_filter_continues() {
    let backend = Recorder::start(b"hi\n").await;
    let port = free_port();
    let dir = filters(&["gate"]);
    let yaml = one_route(format!("tcp://{}", backend.addr), port, None, "{name: gate, config: \"1500\"}");
    let gw = Gateway::start(bin(), with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir));
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    wait_stderr(&gw, &["gate: holding"]).await;
    c.write_all(b"early").await.expect("send before the upstream exists");
    // Held in proxy_on_new_connection: the backend has no connection yet.
    assert_eq!(backend.accepted(), 0, "the upstream is not connected while the filter holds the session");
    wait_stderr(&gw, &["gate: released"]).await;
    assert_eq!(read_exactly(&mut c, 3).await, b"hi\n");
    backend.wait_for(b"early").await;
    // Held again mid-stream by "HOLD", until the next tick continues it.
    c.write_all(b" HOLD this").await.expect("send");
    let released = gw.stderr().matches("gate: released").count();
    let deadline = Instant::now() + WAIT;
    while gw.stderr().matches("gate: released").count() == released {
        assert!(!backend.got().ends_with(b"HOLD this"), "held bytes went up before the filter continued them");
        assert!(Instant::now() < deadline, "never released again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    backend.wait_for(b"early HOLD this").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_closes_only_the_sessions_of_that_instance_which_is_rebuilt() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let dir = TempDir::new();
    wat_filter(&dir, "trapper", &wat_module(TRAP));
    let yaml = one_route(format!("tcp://{}", backend.addr), port, Some("trapping"), "{name: trapper}");
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir).setting("worker_threads", "2"),
    );
    // Two sessions, one per instance (they are taken in turn).
    let mut a = TcpStream::connect(addr(port)).await.expect("a");
    assert_eq!(read_banner(&mut a).await.expect("banner"), "echo");
    a.write_all(b"fine").await.expect("a sends");
    assert_eq!(read_exactly(&mut a, 4).await, b"fine");
    let mut b = TcpStream::connect(addr(port)).await.expect("b");
    assert_eq!(read_banner(&mut b).await.expect("banner"), "echo");
    b.write_all(b"boom").await.expect("b sends what traps");
    assert!(closed(&mut b).await, "the session whose filter trapped is closed");
    let line = gw.wait_log(&[" 500 ", "reason=\"plugin failed\""]).await;
    assert!(line.contains("trapper") && line.contains("trapped"), "the reason names the filter: {line}");
    wait_stderr(&gw, &["a Wasm filter's instance failed", "trapper"]).await;
    // The other instance's session goes on.
    a.write_all(b"still").await.expect("a sends again");
    assert_eq!(read_exactly(&mut a, 5).await, b"still", "a session of the other instance is untouched");
    // New sessions are served (by the healthy instance, or the rebuilt one).
    for _ in 0..4 {
        assert_eq!(echo_session(addr(port), b"after").await, "echo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_filter_is_stopped_by_the_deadline_and_the_gateway_goes_on() {
    let backend = Backend::plain("echo").await;
    let (port, plain) = (free_port(), free_port());
    let dir = TempDir::new();
    wat_filter(&dir, "looper", &wat_module(LOOP));
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{}
  routes:
  - name: looping
    protocols: [tcp]
    destinations: [{{port: {port}}}]
    filter_chains:
    - filters: [{{name: looper}}]
  - name: plain
    protocols: [tcp]
    destinations: [{{port: {plain}}}]
"#,
        backend.addr
    );
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}, 127.0.0.1:{plain}"), yaml), &dir)
            .setting("wasm_call_timeout", "\"50ms\""),
    );
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    assert_eq!(read_banner(&mut c).await.expect("banner"), "echo");
    c.write_all(b"spin").await.expect("send");
    assert!(closed(&mut c).await);
    let line = gw.wait_log(&["route=looping", " 500 ", "reason=\"plugin failed\""]).await;
    assert!(line.contains("looper") && line.contains("wasm_call_timeout (50 ms)"), "{line}");
    assert_eq!(echo_session(addr(plain), b"unaffected").await, "echo", "other routes are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hungry_filter_is_stopped_by_the_cap() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let dir = TempDir::new();
    wat_filter(&dir, "hog", &wat_module(HOG));
    let yaml = one_route(format!("tcp://{}", backend.addr), port, Some("hungry"), "{name: hog}");
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir).setting("wasm_memory_limit", "\"4m\""),
    );
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    assert_eq!(read_banner(&mut c).await.expect("banner"), "echo");
    c.write_all(b"eat").await.expect("send");
    assert!(closed(&mut c).await);
    let line = gw.wait_log(&["route=hungry", " 500 ", "reason=\"plugin failed\""]).await;
    assert!(line.contains("hog") && line.contains("wasm_memory_limit (4194304 bytes)"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_see_the_raw_stream_on_tls_passthrough_routes() {
    let ca = TestCa::new("pt CA");
    let leaf = ca.leaf(&["pt.test"]);
    let backend = Backend::tls("behind", server_config(&leaf, None)).await;
    let port = free_port();
    let dir = filters(&["count", "props"]);
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{}
  routes:
  - name: passthrough
    protocols: [tls_passthrough]
    snis: [pt.test]
    filter_chains:
    - filters:
      - name: count
      - name: props
        config: {{tag: raw}}
"#,
        backend.addr
    );
    let gw = Gateway::start(bin(), with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), yaml), &dir));
    // The handshake is the backend's: the filters pass the TLS bytes on untouched.
    let mut t = tls_connect(addr(port), "pt.test", client_config(&ca)).await.expect("TLS through the filters");
    assert_eq!(read_banner(&mut t).await.expect("banner"), "behind");
    t.write_all(b"ping").await.expect("send");
    assert_eq!(read_exactly(&mut t, 4).await, b"ping");
    drop(t);
    let props = wait_stderr(&gw, &["props tag=raw"]).await;
    assert!(props.contains("sni=pt.test") && props.contains("protocol=tls_passthrough"), "{props}");
    assert!(props.contains("tls=-"), "Strait terminated no TLS here: {props}");
    // The C filter (ABI 0.2.0) counted encrypted bytes: the ClientHello alone
    // is more than the 4 bytes of plaintext.
    let count = wait_stderr(&gw, &["count: down="]).await;
    let down: u64 = count
        .split("down=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(down > 200, "raw TLS bytes were counted: {count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_that_fail_their_checks_are_refused_naming_the_filter_and_the_reason() {
    let backend = Backend::plain("echo").await;
    let (port, admin) = (free_port(), free_port());
    let dir = filters(&["transform"]);
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not a module").expect("write");
    wat_filter(&dir, "nomarker", &wat_module("").replace("(func (export \"proxy_abi_version_0_2_1\"))", ""));
    wat_filter(
        &dir,
        "stranger",
        &wat_module("")
            .replace("(memory (export", "(import \"env\" \"proxy_launch\" (func (param i32)))\n  (memory (export"),
    );
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), "_format_version: \"3.0\"\n"), &dir)
            .setting("database", "\"sqlite\"")
            .setting("admin_listen", &format!("\"127.0.0.1:{admin}\"")),
    );
    let a = addr(admin);
    let r = send_json(a, "POST", "/services", &json!({"name": "kept", "url": format!("tcp://{}", backend.addr)})).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    for (name, reason) in [
        ("garbage", "does not compile"),
        ("nomarker", "lacks the proxy-wasm ABI marker"),
        ("stranger", "imports an unknown host function: env.proxy_launch"),
    ] {
        let r = send_json(a, "POST", "/services/kept/filter-chains", &json!({"filters": [{"name": name}]})).await;
        assert_eq!(r.status, 400, "{name}: {:?}", r.json());
        let msg = r.json()["fields"]["filters"][0]["name"].as_str().unwrap_or_default().to_owned();
        assert!(msg.contains(reason) && msg.contains(&format!("{name}.wasm")), "{name}: {msg}");
        wait_stderr(&gw, &["Wasm filter refused", name]).await;
    }
    // What was stored is still there, and a good filter is accepted.
    let r = get(a, "/services/kept").await;
    assert_eq!(r.status, 200);
    let r = send_json(a, "POST", "/services/kept/filter-chains", &json!({"filters": [{"name": "transform"}]})).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_refuses_filter_chains_while_wasm_is_off() {
    let admin = free_port();
    let _gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{}", free_port()), "_format_version: \"3.0\"\n")
            .setting("database", "\"sqlite\"")
            .setting("admin_listen", &format!("\"127.0.0.1:{admin}\"")),
    );
    let a = addr(admin);
    for (method, path) in [
        ("GET", "/filter-chains"),
        ("POST", "/filter-chains"),
        ("GET", "/filter-chains/x"),
        ("DELETE", "/filter-chains/x"),
        ("GET", "/routes/r/filters/all"),
        ("GET", "/services/s/filter-chains"),
    ] {
        let r = request(a, method, path, Some(("application/json", b"{}")), &[]).await;
        assert_eq!(r.status, 400, "{method} {path}");
        assert_eq!(r.json(), json!({"message": "this endpoint is only available when wasm is enabled"}));
    }
    let r = get(a, "/schemas/filters/anything").await;
    assert_eq!((r.status, r.json()), (404, json!({"message": "Filter 'anything' not found"})));
    // /config: a declarative filter chain says why.
    let doc = "_format_version: \"3.0\"\nservices:\n- name: s\n  url: tcp://127.0.0.1:9\n  filter_chains:\n  - filters: [{name: x}]\n";
    let r = request(a, "POST", "/config", Some(("text/yaml", doc.as_bytes())), &[]).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["message"].as_str().unwrap_or_default().contains("wasm support is not enabled"), "{:?}", r.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_chains_through_the_admin_api_with_kongs_messages() {
    let backend = Recorder::start(b"UP\n").await;
    let (port, admin) = (free_port(), free_port());
    let dir = filters(&["transform", "props", "closeon"]);
    let gw = Gateway::start(
        bin(),
        with_wasm(GatewayConfig::new(format!("127.0.0.1:{port}"), "_format_version: \"3.0\"\n"), &dir)
            .setting("database", "\"sqlite\"")
            .setting("admin_listen", &format!("\"127.0.0.1:{admin}\"")),
    );
    let a = addr(admin);
    let svc = send_json(a, "POST", "/services", &json!({"name": "s", "url": format!("tcp://{}", backend.addr)})).await;
    assert_eq!(svc.status, 201);
    let route = send_json(
        a,
        "POST",
        "/services/s/routes",
        &json!({"name": "r", "protocols": ["tcp"], "destinations": [{"port": port}]}),
    )
    .await;
    assert_eq!(route.status, 201, "{:?}", route.json());
    let route_id = route.json()["id"].as_str().expect("id").to_owned();

    // Kong's schema violations.
    let bad = |body: Value| async move { send_json(a, "POST", "/services/s/filter-chains", &body).await };
    let r = bad(json!({"filters": [{"name": "nope"}]})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["name"], "schema violation");
    assert_eq!(r.json()["fields"], json!({"filters": [{"name": "no such filter"}]}));
    let r = bad(json!({"filters": []})).await;
    assert_eq!(r.json()["fields"], json!({"filters": "length must be at least 1"}));
    let r = bad(json!({})).await;
    assert_eq!(r.json()["fields"], json!({"filters": "required field missing"}));
    let r = bad(json!({"filters": [{"name": "props"}]})).await;
    assert!(
        r.json()["fields"]["filters"][0]["config"].as_str().unwrap_or_default().contains("expected object, got null")
    );
    let r = bad(json!({"filters": [{"name": "props", "config": {}}]})).await;
    assert_eq!(r.json()["fields"], json!({"filters": [{"config": "property tag is required"}]}));
    let r = bad(json!({"filters": [{"name": "transform", "config": {"a": 1}}]})).await;
    assert_eq!(r.json()["fields"]["filters"][0]["config"], "wrong type: expected one of string, null, got object");
    let r = send_json(
        a,
        "POST",
        "/filter-chains",
        &json!({"route": {"id": route_id}, "service": {"id": svc.json()["id"]}, "filters": [{"name": "transform"}]}),
    )
    .await;
    assert_eq!(
        r.json()["fields"]["@entity"],
        json!(["only one or none of these fields must be set: 'service', 'route'"])
    );
    let r = send_json(a, "POST", "/filter-chains", &json!({"filters": [{"name": "transform"}]})).await;
    assert_eq!(
        r.json()["fields"]["@entity"],
        json!(["at least one of these fields must be non-empty: 'service', 'route'"])
    );
    // A filter that refuses its configuration (proxy_on_configure false).
    let r = bad(json!({"filters": [{"name": "closeon", "config": ""}]})).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert!(r.json().to_string().contains("refused its configuration"), "{:?}", r.json());

    // A chain on the route, then its sessions run it.
    let fc =
        send_json(a, "POST", "/routes/r/filter-chains", &json!({"name": "fc1", "filters": [{"name": "transform"}]}))
            .await;
    assert_eq!(fc.status, 201, "{:?}", fc.json());
    let fc = fc.json();
    assert_eq!(fc["route"], json!({"id": route_id}));
    assert_eq!(fc["service"], Value::Null);
    assert_eq!(fc["enabled"], true);
    assert_eq!(fc["filters"], json!([{"name": "transform", "enabled": true, "config": null}]));
    let r = send_json(a, "POST", "/routes/r/filter-chains", &json!({"filters": [{"name": "transform"}]})).await;
    assert_eq!(r.status, 409, "one chain per route: {:?}", r.json());
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    assert_eq!(read_exactly(&mut c, 3).await, b"up\n");
    c.write_all(b"through the admin api").await.expect("send");
    backend.wait_for(b"THROUGH THE ADMIN API").await;
    drop(c);

    // Reading chains back, Kong's ways.
    let list = get(a, "/filter-chains").await.json();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(get(a, "/filter-chains/fc1").await.json()["id"], fc["id"]);
    assert_eq!(get(a, "/filter-chains/fc1/route").await.json()["name"], "r");
    assert_eq!(get(a, "/filter-chains/fc1/service").await.status, 404);
    assert_eq!(get(a, "/routes/r/filter-chains").await.json()["data"][0]["name"], "fc1");
    let svc_chain = send_json(
        a,
        "POST",
        "/services/s/filter-chains",
        &json!({"filters": [{"name": "props", "config": {"tag": "svc"}}, {"name": "transform", "enabled": false}]}),
    )
    .await;
    assert_eq!(svc_chain.status, 201, "{:?}", svc_chain.json());
    let all = get(a, "/routes/r/filters/all").await.json();
    let names: Vec<(&str, &str, bool)> = all["filters"]
        .as_array()
        .expect("filters")
        .iter()
        .map(|f| (f["name"].as_str().unwrap_or(""), f["from"].as_str().unwrap_or(""), f["enabled"] == true))
        .collect();
    assert_eq!(names, [("props", "service", true), ("transform", "service", false), ("transform", "route", true)]);
    assert_eq!(get(a, "/routes/r/filters/enabled").await.json()["filters"].as_array().map(Vec::len), Some(2));
    assert_eq!(get(a, "/routes/r/filters/disabled").await.json()["filters"][0]["from"], "service");
    let schema = get(a, "/schemas/filters/props").await;
    assert_eq!(schema.status, 200);
    assert_eq!(schema.json()["required"], json!(["tag"]));
    assert_eq!(schema.json()["$schema"], "http://json-schema.org/draft-04/schema#");
    assert_eq!(get(a, "/schemas/filters/transform").await.json()["type"], json!(["string", "null"]));

    // The service chain runs first: props logs, then transform runs (route).
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    assert_eq!(read_exactly(&mut c, 3).await, b"up\n");
    wait_stderr(&gw, &["props tag=svc", "route=r"]).await;
    drop(c);

    // PATCH disables the route's chain; its sessions no longer transform.
    let r = send_json(a, "PATCH", "/filter-chains/fc1", &json!({"enabled": false})).await;
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(false)));
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    assert_eq!(read_exactly(&mut c, 3).await, b"UP\n", "no transform on the way back");
    c.write_all(b"untouched").await.expect("send");
    backend.wait_for(b"untouched").await;
    drop(c);

    // A filter configured as a plugin (Kong 3.9), on the route only.
    let r = send_json(a, "POST", "/plugins", &json!({"name": "transform", "route": {"id": route_id}})).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["config"], Value::Null);
    let r = send_json(a, "POST", "/plugins", &json!({"name": "props", "config": {"tag": "global"}})).await;
    assert_eq!(r.status, 400, "{:?}", r.json());
    assert_eq!(
        r.json()["fields"]["@entity"],
        json!(["at least one of these fields must be non-empty: 'service', 'route'"])
    );
    let mut c = TcpStream::connect(addr(port)).await.expect("connect");
    assert_eq!(read_exactly(&mut c, 3).await, b"up\n", "the filter plugin transforms");
    drop(c);
    let enabled = get(a, "/plugins/enabled").await.json();
    assert!(enabled["enabled_plugins"].as_array().expect("list").iter().any(|p| p == "transform"));

    // Deleting the route takes its chain with it; the service's stays.
    let plugin_id = get(a, "/plugins").await.json()["data"][0]["id"].as_str().expect("id").to_owned();
    assert_eq!(request(a, "DELETE", &format!("/plugins/{plugin_id}"), None, &[]).await.status, 204);
    assert_eq!(request(a, "DELETE", "/routes/r", None, &[]).await.status, 204);
    let left = get(a, "/filter-chains").await.json();
    assert_eq!(left["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(left["data"][0]["service"]["id"], svc.json()["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declarative_filter_chains_are_checked_as_kong_checks_them() {
    let dir = filters(&["transform", "props"]);
    let try_start = |yaml: &str, wasm: bool| {
        let files = TempDir::new();
        let kong = files.write("kong.yml", yaml);
        let mut settings = format!(
            "prefix = {:?}\ndatabase = \"off\"\nadmin_listen = \"off\"\ndeclarative_config = {kong:?}\nstream_listen = \"127.0.0.1:{}\"\n",
            files.path().join("prefix"),
            free_port()
        );
        if wasm {
            settings.push_str(&format!("wasm = \"on\"\nwasm_filters_path = {:?}\n", dir.path()));
        }
        let conf = files.write("strait.toml", &settings);
        let out =
            std::process::Command::new(bin()).arg("check").arg("-c").arg(&conf).output().expect("run strait check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let good = r#"_format_version: "3.0"
services:
- name: s
  url: tcp://127.0.0.1:9
  filter_chains:
  - name: on-service
    filters: [{name: props, config: {tag: a}}]
  routes:
  - name: r
    protocols: [tcp]
    destinations: [{port: 9999}]
    filter_chains:
    - filters: [{name: transform, config: "raw string"}]
filter_chains:
- name: top
  route: r2
  filters: [{name: transform}]
routes:
- name: r2
  service: s
  protocols: [tcp]
  destinations: [{port: 9998}]
"#;
    let (ok, out) = try_start(good, true);
    assert!(ok, "{out}");
    let (ok, out) = try_start(good, false);
    assert!(!ok && out.contains("wasm support is not enabled"), "{out}");
    let (ok, out) = try_start(&good.replace("name: transform, config", "name: nope, config"), true);
    assert!(!ok && out.contains("filters[1].name: no such filter"), "{out}");
    let (ok, out) = try_start(&good.replace("{tag: a}", "{tag: 5}"), true);
    assert!(!ok && out.contains("property tag validation failed"), "{out}");
    let (ok, out) = try_start(&good.replace("  route: r2\n", "  route: r2\n  service: s\n"), true);
    assert!(!ok && out.contains("only one or none of these fields must be set"), "{out}");
    let (ok, out) = try_start(&good.replace("  route: r2\n", "  route: r\n"), true);
    assert!(!ok && out.contains("UNIQUE violation"), "one chain per route: {out}");
    // No filter enabled: Kong's other message.
    let empty = TempDir::new();
    let files = TempDir::new();
    let kong = files.write("kong.yml", good);
    let conf = files.write(
        "strait.toml",
        &format!(
            "prefix = {:?}\ndatabase = \"off\"\nadmin_listen = \"off\"\ndeclarative_config = {kong:?}\nwasm = \"on\"\nwasm_filters_path = {:?}\n",
            files.path().join("prefix"),
            empty.path()
        ),
    );
    let out = std::process::Command::new(bin()).arg("check").arg("-c").arg(&conf).output().expect("run strait check");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no wasm filters are available"));
    // A path that is not a folder: Kong's startup error.
    let conf = files.write("bad.toml", "wasm = \"on\"\nwasm_filters_path = \"/nonexistent/filters\"\n");
    let out = std::process::Command::new(bin()).arg("check").arg("-c").arg(&conf).output().expect("run strait check");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("wasm_filters_path '/nonexistent/filters' is not a valid directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
