//! The open sessions as an Admin API resource, through the real binary:
//! listing (every protocol, every filter), kill one and in bulk, the event
//! stream, the route tester against real sessions, and bad parameters.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use test_support::WAIT;
use test_support::backend::{Backend, UdpBackend, closed_without_data, read_banner, tls_connect};
use test_support::certs::{TestCa, client_config, server_config};
use test_support::gateway::{Gateway, GatewayConfig, TempDir, certificate_yaml};
use test_support::http::{get, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Setup {
    gw: Gateway,
    /// Where the file-log plugin writes.
    file_log: std::path::PathBuf,
    _logs: TempDir,
    admin: SocketAddr,
    tcp: u16,
    udp: u16,
    ca: TestCa,
    plain: Backend,
    _pass: Backend,
    _udp: UdpBackend,
}

/// One plain port serving a `tcp` route (clients from 127.0.0.1), a `tls`
/// route (term.test) and a passthrough one (pass.test), and a `udp` port.
async fn setup() -> Setup {
    let ca = TestCa::new("sessions CA");
    let plain = Backend::plain("plain").await;
    let pass = Backend::tls("passed", server_config(&ca.leaf(&["pass.test"]), None)).await;
    let udp_backend = UdpBackend::start("u").await;
    let (tcp, udp, admin_port) = (test_support::free_port(), test_support::free_port(), test_support::free_port());
    let logs = TempDir::new();
    let file_log = logs.path().join("sessions.json");
    let yaml = format!(
        r#"_format_version: "3.0"
plugins:
- name: file-log
  config: {{path: {file_log:?}}}
certificates:
{}upstreams:
- name: pool
  targets:
  - target: {plain}
services:
- name: plain-svc
  host: pool
  port: 1
  protocol: tcp
  routes:
  - name: plain-route
    protocols: [tcp]
    sources: [{{ip: 127.0.0.1}}]
- name: term-svc
  url: tcp://{plain}
  routes:
  - name: term-route
    protocols: [tls]
    snis: [term.test]
- name: pass-svc
  url: tcp://{pass}
  routes:
  - name: pass-route
    protocols: [tls_passthrough]
    snis: [pass.test]
- name: udp-svc
  url: udp://{udp_up}
  routes:
  - name: udp-route
    protocols: [udp]
    destinations: [{{port: {udp}}}]
"#,
        certificate_yaml(&ca.leaf(&["term.test"]), &["term.test"]),
        plain = plain.addr,
        pass = pass.addr,
        udp_up = udp_backend.addr,
        file_log = file_log.display().to_string(),
    );
    let cfg = GatewayConfig::new(format!("127.0.0.1:{tcp}, 127.0.0.1:{udp} udp"), yaml)
        .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\""))
        .setting("tls_detect_timeout", "\"300ms\"");
    let gw = Gateway::start(bin(), cfg);
    Setup { gw, file_log, _logs: logs, admin: addr(admin_port), tcp, udp, ca, plain, _pass: pass, _udp: udp_backend }
}

async fn sessions(admin: SocketAddr, query: &str) -> Vec<Value> {
    let r = get(admin, &format!("/sessions{query}")).await;
    assert_eq!(r.status, 200, "GET /sessions{query}: {}", String::from_utf8_lossy(&r.body));
    r.json()["data"].as_array().cloned().unwrap_or_default()
}

/// Polls (bounded) until `/sessions{query}` lists `n` sessions.
async fn wait_sessions(admin: SocketAddr, query: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = sessions(admin, query).await;
        if list.len() == n {
            return list;
        }
        assert!(tokio::time::Instant::now() < deadline, "{query}: wanted {n} sessions, have {list:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn plain_session(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(addr(port)).await.expect("connect");
    // Past tls_detect_timeout the plain route serves it.
    assert_eq!(read_banner(&mut s).await.expect("banner"), "plain");
    s.write_all(b"hello").await.expect("send");
    let mut back = [0u8; 5];
    tokio::time::timeout(WAIT, s.read_exact(&mut back)).await.expect("echo in time").expect("echo");
    s
}

fn by_protocol<'a>(list: &'a [Value], p: &str) -> &'a Value {
    list.iter().find(|s| s["protocol"] == p).unwrap_or_else(|| panic!("no {p} session in {list:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_of_every_protocol_are_listed_filtered_and_gone_when_they_end() {
    let st = setup().await;
    let plain = plain_session(st.tcp).await;
    let mut term = tls_connect(addr(st.tcp), "term.test", client_config(&st.ca)).await.expect("tls");
    assert_eq!(read_banner(&mut term).await.expect("banner"), "plain");
    let mut pass = tls_connect(addr(st.tcp), "pass.test", client_config(&st.ca)).await.expect("passthrough");
    assert_eq!(read_banner(&mut pass).await.expect("banner"), "passed");
    let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp bind");
    udp.send_to(b"ping", addr(st.udp)).await.expect("udp send");
    let mut buf = [0u8; 64];
    let (n, _) = tokio::time::timeout(WAIT, udp.recv_from(&mut buf)).await.expect("udp reply").expect("recv");
    assert_eq!(&buf[..n], b"u:ping");

    let list = wait_sessions(st.admin, "?state=relaying", 4).await;
    let t = by_protocol(&list, "tcp");
    assert_eq!(t["route"]["name"], "plain-route");
    assert_eq!(t["service"]["name"], "plain-svc");
    assert_eq!(t["upstream"]["name"], "pool");
    assert_eq!(t["upstream"]["address"], st.plain.addr.to_string());
    assert_eq!(t["upstream"]["target"], st.plain.addr.to_string());
    assert_eq!(t["client"]["ip"], "127.0.0.1");
    assert_eq!(t["client"]["port"], plain.local_addr().expect("local").port());
    assert_eq!(t["server"]["port"], st.tcp);
    assert_eq!(t["bytes"]["received"], 5, "{t}");
    assert_eq!(t["bytes"]["sent"], 11, "banner and echo: {t}");
    assert_eq!(t["tries"], 1);
    assert!(t["started_at"].as_u64().is_some_and(|s| s > 1_700_000_000_000), "{t}");
    assert!(t["last_activity_at"].as_u64() >= t["started_at"].as_u64(), "{t}");
    let tls = by_protocol(&list, "tls");
    assert_eq!(tls["sni"], "term.test");
    assert_eq!(tls["route"]["name"], "term-route");
    assert!(tls["tls"]["version"].as_str().is_some_and(|v| v.starts_with("TLS")), "{tls}");
    assert!(tls["tls"]["cipher"].as_str().is_some_and(|c| !c.is_empty()), "{tls}");
    let p = by_protocol(&list, "tls_passthrough");
    assert_eq!(p["sni"], "pass.test");
    assert!(p["tls"].is_null(), "not terminated: {p}");
    let u = by_protocol(&list, "udp");
    assert_eq!(u["route"]["name"], "udp-route");
    assert_eq!(u["datagrams"]["received"], 1, "{u}");
    assert_eq!(u["datagrams"]["sent"], 1, "{u}");

    let metrics = String::from_utf8_lossy(&get(st.admin, "/metrics").await.body).into_owned();
    for p in ["tcp", "tls", "tls_passthrough", "udp"] {
        let line = format!("strait_sessions_open{{protocol=\"{p}\",state=\"relaying\"}} 1");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let line = format!("strait_sessions_open_by_listener{{listener=\"127.0.0.1:{}\"}} 3", st.tcp);
    assert!(metrics.contains(&line), "{line} in {metrics}");
    let received = metrics
        .lines()
        .find_map(|l| l.strip_prefix("strait_session_bytes_total{direction=\"received\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(received.is_some_and(|n| n > 0), "open sessions' bytes count: {metrics}");
    // One session by id; each filter alone.
    let one = get(st.admin, &format!("/sessions/{}", t["id"])).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["id"], t["id"]);
    for (query, want) in [
        ("?protocol=tcp", "tcp"),
        ("?route=term-route", "tls"),
        ("?service=pass-svc", "tls_passthrough"),
        ("?upstream=pool", "tcp"),
        ("?sni=PASS.test", "tls_passthrough"),
        ("?protocol=udp&client=127.0.0.0/8", "udp"),
    ] {
        let got = sessions(st.admin, query).await;
        assert!(got.iter().all(|s| s["protocol"] == want) && !got.is_empty(), "{query}: {got:#?}");
    }
    // The terminated session's service points at the same address.
    let to_plain = sessions(st.admin, &format!("?target={}", st.plain.addr)).await;
    assert_eq!(to_plain.len(), 2, "{to_plain:#?}");
    assert!(to_plain.iter().all(|s| s["upstream"]["address"] == st.plain.addr.to_string()));
    assert_eq!(sessions(st.admin, "?client=10.0.0.0/8").await.len(), 0);
    assert_eq!(sessions(st.admin, "?older_than=3600").await.len(), 0);
    assert_eq!(sessions(st.admin, "?older_than=0&idle_for=0").await.len(), 4);
    assert_eq!(sessions(st.admin, "?state=setup").await.len(), 0);
    // Sorted by bytes, most first, paged one at a time.
    let page = get(st.admin, "/sessions?sort=-bytes&size=1").await.json();
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    let next = page["next"].as_str().expect("a next page").to_owned();
    let second = get(st.admin, &next).await.json();
    assert!(
        page["data"][0]["bytes"]["total"].as_u64() >= second["data"][0]["bytes"]["total"].as_u64(),
        "{page} then {second}"
    );
    assert_ne!(page["data"][0]["id"], second["data"][0]["id"]);

    drop(plain);
    drop(term);
    drop(pass);
    wait_sessions(st.admin, "?protocol=tcp", 0).await;
    wait_sessions(st.admin, "?protocol=tls", 0).await;
    let gone = get(st.admin, &format!("/sessions/{}", t["id"])).await;
    assert_eq!(gone.status, 404);
    drop(st.gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_closes_both_sides_and_is_logged_and_bulk_kills_need_a_filter() {
    let st = setup().await;
    let mut victim = plain_session(st.tcp).await;
    let mut bystander = plain_session(st.tcp).await;
    let list = wait_sessions(st.admin, "?protocol=tcp", 2).await;
    let port = victim.local_addr().expect("local").port();
    let id = list.iter().find(|s| s["client"]["port"] == port).expect("the victim")["id"].clone();
    let r = request(st.admin, "DELETE", &format!("/sessions/{id}"), None, &[]).await;
    assert_eq!(r.status, 204);
    // The client sees the close (the upstream's echo side too: the session is gone).
    assert!(closed_without_data(&mut victim).await, "the client side closed");
    st.gw.wait_log(&["reason=\"closed by admin\""]).await;
    // The log plugins see it too.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&st.file_log).unwrap_or_default();
        if text.lines().any(|l| l.contains("\"close_reason\":\"closed by admin\"")) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no file-log entry closed by admin:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = request(st.admin, "DELETE", &format!("/sessions/{id}"), None, &[]).await;
    assert_eq!(again.status, 404);
    // The other session is untouched.
    bystander.write_all(b"still").await.expect("send");
    let mut back = [0u8; 5];
    tokio::time::timeout(WAIT, bystander.read_exact(&mut back)).await.expect("in time").expect("echo");

    // Bulk: refused without a filter, counted with dry_run, then done.
    let refused = request(st.admin, "DELETE", "/sessions", None, &[]).await;
    assert_eq!(refused.status, 400, "{}", String::from_utf8_lossy(&refused.body));
    let dry = request(st.admin, "DELETE", "/sessions?route=plain-route&dry_run=true", None, &[]).await;
    assert_eq!(dry.json()["count"], 1, "{}", dry.json());
    assert_eq!(sessions(st.admin, "?route=plain-route").await.len(), 1, "a dry run closes nothing");
    let done = request(st.admin, "DELETE", "/sessions?route=plain-route", None, &[]).await;
    assert_eq!(done.json()["count"], 1);
    assert!(closed_without_data(&mut bystander).await);
    wait_sessions(st.admin, "", 0).await;
    let all = request(st.admin, "DELETE", "/sessions?all=true", None, &[]).await;
    assert_eq!(all.json()["count"], 0);
    let metrics = String::from_utf8_lossy(&get(st.admin, "/metrics").await.body).into_owned();
    assert!(metrics.contains("strait_sessions_closed_by_admin_total 2"), "{metrics}");
    assert!(metrics.contains("strait_sessions_closed_total{reason=\"closed by admin\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_400s_naming_the_parameter() {
    let st = setup().await;
    for (query, param) in [
        ("/sessions?colour=red", "colour"),
        ("/sessions?client=10.0.0.0/40", "client"),
        ("/sessions?target=10.0.0.1", "target"),
        ("/sessions?older_than=-5", "older_than"),
        ("/sessions?idle_for=soon", "idle_for"),
        ("/sessions?sort=colour", "sort"),
        ("/sessions/events?state=gone", "state"),
        ("/router/match?protocol=tls&source=1.2.3.4&destination=127.0.0.1:1", "source"),
        ("/router/match?protocol=tcp&source=1.2.3.4:1&destination=127.0.0.1:1&sni=a", "sni"),
    ] {
        let r = get(st.admin, query).await;
        assert_eq!(r.status, 400, "{query}");
        assert!(r.json()["fields"].get(param).is_some(), "{query}: {}", r.json());
    }
    let r = request(st.admin, "DELETE", "/sessions?client=nope", None, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(get(st.admin, "/sessions/notanumber").await.status, 404);
    assert_eq!(get(st.admin, "/sessions?size=0").await.status, 400);
}

/// Reads server-sent events from a raw connection until `n` arrived.
async fn read_events(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<(String, Value)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(buf).into_owned();
        let events: Vec<(String, Value)> = text
            .split("\n\n")
            .filter_map(|block| {
                let kind = block.lines().find_map(|l| l.strip_prefix("event: "))?;
                let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
                Some((kind.to_owned(), serde_json::from_str(data).ok()?))
            })
            .collect();
        if events.len() >= n {
            return events;
        }
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let got = tokio::time::timeout(left, s.read(&mut chunk)).await;
        let Ok(Ok(k)) = got else { panic!("only {} events: {text}", events.len()) };
        assert!(k > 0, "the stream ended: {text}");
        buf.extend_from_slice(&chunk[..k]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_sends_opens_and_closes_in_order_and_survives_a_reader_that_stops() {
    let st = setup().await;
    let subscribe = |query: &'static str| async move {
        let mut s = TcpStream::connect(st.admin).await.expect("admin");
        s.write_all(format!("GET /sessions/events{query} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.expect("ask");
        s
    };
    let mut watcher = subscribe("?protocol=tcp").await;
    let mut buf = Vec::new();
    // The stream is open once its first comment arrives.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(&buf).contains(": sessions") {
        let mut chunk = [0u8; 1024];
        let k = tokio::time::timeout_at(deadline, watcher.read(&mut chunk)).await.expect("stream opens").expect("read");
        buf.extend_from_slice(&chunk[..k]);
    }
    // A reader that never reads (with a small receive buffer, so that it
    // falls behind soon), subscribed before the traffic.
    let stalled = {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.set_recv_buffer_size(4096).expect("rcvbuf");
        let mut s = sock.connect(st.admin).await.expect("admin");
        s.write_all(b"GET /sessions/events HTTP/1.1\r\nHost: a\r\n\r\n").await.expect("ask");
        s
    };
    let s = plain_session(st.tcp).await;
    drop(s);
    let events = read_events(&mut watcher, &mut buf, 2).await;
    assert_eq!(events[0].0, "open");
    assert_eq!(events[1].0, "close");
    assert_eq!(events[0].1["session"]["id"], events[1].1["session"]["id"]);
    assert_eq!(events[0].1["session"]["route"]["name"], "plain-route");
    assert_eq!(events[1].1["record"]["reason"], "client closed");
    assert_eq!(events[1].1["record"]["bytes_received"], 5);
    // More sessions while the watcher keeps reading and the stalled reader
    // does not: the watcher sees each opened then closed, and no session
    // waits for the stalled one (the kernel's buffers hold a few MiB for it
    // here; that a reader behind its queue is dropped is the unit test
    // `a_reader_that_stops_reading_is_dropped_...` in strait-admin).
    const N: usize = 200;
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        let mut chunk = vec![0u8; 64 * 1024];
        while text.matches("event: close").count() < N {
            match tokio::time::timeout(WAIT, watcher.read(&mut chunk)).await {
                Ok(Ok(k)) if k > 0 => text.push_str(&String::from_utf8_lossy(&chunk[..k])),
                other => {
                    panic!("the watcher's stream stopped ({other:?}) after {} events", text.matches("event: ").count())
                }
            }
        }
        text
    });
    for _ in 0..N {
        let mut c = TcpStream::connect(addr(st.tcp)).await.expect("connect");
        // Not TLS: routed at once, without waiting out tls_detect_timeout.
        c.write_all(b"x").await.expect("send");
        assert_eq!(read_banner(&mut c).await.expect("banner"), "plain");
    }
    let text = tokio::time::timeout(WAIT, reader).await.expect("the watcher saw them all").expect("reader");
    // Each session's open comes before its close.
    let mut open = std::collections::HashSet::new();
    for block in text.split("\n\n") {
        let (Some(kind), Some(id)) =
            (block.lines().find_map(|l| l.strip_prefix("event: ")), block.lines().find_map(|l| l.strip_prefix("id: ")))
        else {
            continue;
        };
        match kind {
            "open" => assert!(open.insert(id.to_owned()), "opened twice: {id}"),
            _ => assert!(open.remove(id), "closed before it opened: {id}"),
        }
    }
    drop(stalled);
    drop(st.gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_tester_agrees_with_real_sessions() {
    let st = setup().await;
    let probe = |q: String| async move {
        let r = get(st.admin, &format!("/router/match?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
        r.json()
    };
    let d = format!("127.0.0.1:{}", st.tcp);
    let tcp = probe(format!("protocol=tcp&source=127.0.0.1:5000&destination={d}")).await;
    assert_eq!(tcp["route"]["name"], "plain-route");
    assert_eq!(tcp["tls_detect"]["waits_for_client_hello"], true, "{tcp}");
    assert_eq!(tcp["tls_detect"]["timeout_ms"], 300);
    let names: Vec<&str> =
        tcp["candidates"].as_array().expect("candidates").iter().filter_map(|c| c["route"]["name"].as_str()).collect();
    assert_eq!(names, ["plain-route"], "{tcp}");
    let tls = probe(format!("protocol=tls&source=127.0.0.1:5000&destination={d}&sni=term.test")).await;
    assert_eq!(tls["route"]["name"], "term-route");
    assert_eq!(tls["protocol"], "tls");
    let pass = probe(format!("protocol=tls_passthrough&source=127.0.0.1:5000&destination={d}&sni=pass.test")).await;
    assert_eq!(pass["route"]["name"], "pass-route");
    assert_eq!(pass["protocol"], "tls_passthrough");
    // Considered first (declared first, same rank), and passed over.
    let first = &pass["candidates"][0];
    assert_eq!(first["route"]["name"], "term-route", "{pass}");
    assert_eq!(first["matched"], false);
    assert_eq!(pass["candidates"][1]["route"]["name"], "pass-route", "{pass}");
    let other =
        pass["candidates"].as_array().and_then(|c| c.iter().find(|c| c["route"]["name"] == "term-route")).cloned();
    assert_eq!(other.map(|c| c["mismatched"].clone()), Some(serde_json::json!(["snis"])));
    let miss = probe(format!("protocol=tcp&source=10.9.9.9:5000&destination={d}")).await;
    assert!(miss["route"].is_null());
    assert!(miss["reason"].as_str().is_some(), "{miss}");
    let udp = probe(format!("protocol=udp&source=127.0.0.1:5000&destination=127.0.0.1:{}", st.udp)).await;
    assert_eq!(udp["route"]["name"], "udp-route");
    assert_eq!(udp["listener"]["udp"], true);

    // Real sessions go where the tester said.
    let s = plain_session(st.tcp).await;
    let mut t = tls_connect(addr(st.tcp), "term.test", client_config(&st.ca)).await.expect("tls");
    read_banner(&mut t).await.expect("banner");
    let list = wait_sessions(st.admin, "?state=relaying", 2).await;
    assert_eq!(by_protocol(&list, "tcp")["route"], tcp["route"]);
    assert_eq!(by_protocol(&list, "tls")["route"], tls["route"]);
    drop((s, t));
}

/// Upstream `pool` over `targets`, with `extra` upstream fields (YAML lines
/// at two spaces), served on `port`.
fn pool(port: u16, targets: &[SocketAddr], extra: &str) -> String {
    let targets: String = targets.iter().map(|t| format!("  - target: {t}\n")).collect();
    format!(
        r#"_format_version: "3.0"
upstreams:
- name: pool
{extra}
  targets:
{targets}services:
- name: svc
  host: pool
  port: 1
  protocol: tcp
  routes:
  - name: r
    protocols: [tcp]
    destinations: [{{port: {port}}}]
"#
    )
}

fn start_pool(yaml: String, settings: &[(&str, &str)]) -> (Gateway, SocketAddr, u16) {
    let port = yaml
        .split("port: ")
        .last()
        .and_then(|s| s.split('}').next())
        .and_then(|p| p.parse().ok())
        .expect("the route's port");
    let admin_port = test_support::free_port();
    let mut cfg = GatewayConfig::new(format!("127.0.0.1:{port}"), yaml)
        .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\""));
    for (k, v) in settings {
        cfg = cfg.setting(k, v);
    }
    (Gateway::start(bin(), cfg), addr(admin_port), port)
}

/// A session that sent bytes at once (no tls_detect wait): its stream and
/// the backend that serves it.
async fn session_to(port: u16) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr(port)).await.expect("connect");
    let name = read_banner(&mut s).await.expect("banner");
    (s, name)
}

async fn target_health(admin: SocketAddr, target: SocketAddr) -> String {
    let report = get(admin, "/upstreams/pool/health").await.json();
    report["data"]
        .as_array()
        .and_then(|d| d.iter().find(|t| t["target"] == target.to_string()))
        .and_then(|t| t["health"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_takes_no_new_sessions_reports_progress_and_closes_the_rest_at_its_timeout() {
    let (a, b) = (Backend::plain("a").await, Backend::plain("b").await);
    let (gw, admin, port) = start_pool(pool(test_support::free_port(), &[a.addr, b.addr], ""), &[]);
    // Round-robin: two sessions, one on each.
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..4 {
        let (s, name) = session_to(port).await;
        if name == "a" { on_a.push(s) } else { on_b.push(s) }
    }
    assert_eq!((on_a.len(), on_b.len()), (2, 2));
    let path = format!("/upstreams/pool/targets/{}/drain", a.addr);
    let started = request(admin, "POST", &format!("{path}?timeout=1.5&then=close"), None, &[]).await;
    assert_eq!(started.status, 200, "{}", String::from_utf8_lossy(&started.body));
    assert_eq!(started.json()["sessions"], 2, "{}", started.json());
    assert_eq!(started.json()["draining"], true);
    assert_eq!(target_health(admin, a.addr).await, "DRAINING");
    // New sessions all go to b.
    for _ in 0..4 {
        let (s, name) = session_to(port).await;
        assert_eq!(name, "b");
        on_b.push(s);
    }
    // The drain survives a configuration change that keeps the target.
    let same = pool(port, &[a.addr, b.addr], "  tags: [changed]");
    let r = request(admin, "POST", "/config", Some(("application/x-yaml", same.as_bytes())), &[]).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(target_health(admin, a.addr).await, "DRAINING");
    assert_eq!(session_to(port).await.1, "b");
    // One session on a ends by itself: the count goes down.
    drop(on_a.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    while get(admin, &path).await.json()["sessions"] != 1 {
        assert!(tokio::time::Instant::now() < deadline, "{}", get(admin, &path).await.json());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At the timeout the rest is closed; b's sessions are untouched.
    let mut last = on_a.pop().expect("one left");
    assert!(closed_without_data(&mut last).await, "closed at the drain's timeout");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let progress = get(admin, &path).await.json();
        if progress["sessions"] == 0 && progress["closed_at_timeout"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{progress}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.wait_log(&["reason=\"closed by admin\""]).await;
    for s in &mut on_b {
        s.write_all(b"x").await.expect("b's sessions go on");
        let mut one = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut one)).await.expect("in time").expect("echo");
    }
    // Ending the drain: a takes sessions again.
    assert_eq!(request(admin, "DELETE", &path, None, &[]).await.status, 204);
    assert_ne!(target_health(admin, a.addr).await, "DRAINING");
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(session_to(port).await.1);
    }
    assert!(names.iter().any(|n| n == "a"), "{names:?}");
    // Bad input names the field.
    let bad = request(admin, "POST", &format!("{path}?then=later"), None, &[]).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["fields"].get("then").is_some(), "{}", bad.json());
    assert_eq!(request(admin, "POST", "/upstreams/pool/targets/10.9.9.9:1/drain", None, &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_target_down_close_ends_the_sessions_of_a_target_an_active_check_ejects() {
    let (a, b) = (Backend::plain("a").await, Backend::plain("b").await);
    let checks = r#"  on_target_down: close
  healthchecks:
    active:
      type: tcp
      timeout: 1
      healthy: {interval: 0.2, successes: 1}
      unhealthy: {interval: 0.2, tcp_failures: 1, timeouts: 1}"#;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let (gw, admin, port) = start_pool(pool(test_support::free_port(), &[a_addr, b_addr], checks), &[]);
    let (mut to_a, mut to_b) = (None, None);
    while to_a.is_none() || to_b.is_none() {
        let (s, name) = session_to(port).await;
        if name == "a" { to_a = Some(s) } else { to_b = Some(s) }
    }
    let (mut to_a, mut to_b) = (to_a.expect("a"), to_b.expect("b"));
    // a stops accepting (its open connection stays): the probe ejects it.
    drop(a);
    assert!(closed_without_data(&mut to_a).await, "the session to a closed when a was marked down");
    assert_eq!(target_health(admin, a_addr).await, "UNHEALTHY");
    gw.wait_log(&["reason=\"target down\""]).await;
    to_b.write_all(b"y").await.expect("b's session goes on");
    let mut one = [0u8; 1];
    tokio::time::timeout(WAIT, to_b.read_exact(&mut one)).await.expect("in time").expect("echo");
    // The field is exported only when set.
    let exported = get(admin, "/upstreams/pool").await.json();
    assert_eq!(exported["on_target_down"], "close");
    assert!(exported.get("on_target_removed").is_none(), "{exported}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_target_removed_drain_keeps_sessions_until_drain_timeout() {
    let (a, b) = (Backend::plain("a").await, Backend::plain("b").await);
    let port = test_support::free_port();
    let yaml = pool(port, &[a.addr, b.addr], "  on_target_removed: drain");
    let (gw, admin, _) = start_pool(yaml, &[("drain_timeout", "1")]);
    let (mut to_a, mut to_b) = (None, None);
    while to_a.is_none() || to_b.is_none() {
        let (s, name) = session_to(port).await;
        if name == "a" { to_a = Some(s) } else { to_b = Some(s) }
    }
    let (mut to_a, mut to_b) = (to_a.expect("a"), to_b.expect("b"));
    // a is deleted: its session goes on for now, new ones go to b.
    let without_a = pool(port, &[b.addr], "  on_target_removed: drain");
    let r = request(admin, "POST", "/config", Some(("application/x-yaml", without_a.as_bytes())), &[]).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    to_a.write_all(b"z").await.expect("still open");
    let mut one = [0u8; 1];
    tokio::time::timeout(WAIT, to_a.read_exact(&mut one))
        .await
        .expect("in time")
        .expect("echo right after the removal");
    assert_eq!(session_to(port).await.1, "b");
    // At drain_timeout it closes.
    assert!(closed_without_data(&mut to_a).await, "closed at drain_timeout");
    gw.wait_log(&["reason=\"target removed\""]).await;
    to_b.write_all(b"w").await.expect("b goes on");
    tokio::time::timeout(WAIT, to_b.read_exact(&mut one)).await.expect("in time").expect("echo");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_closes_the_upstream_side_too() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up_addr = upstream.local_addr().expect("addr");
    let port = test_support::free_port();
    let admin_port = test_support::free_port();
    let yaml = test_support::gateway::one_route(
        up_addr,
        &[],
        &["protocols: [tcp]", &format!("destinations: [{{port: {port}}}]")],
    );
    let cfg = GatewayConfig::new(format!("127.0.0.1:{port}"), yaml)
        .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\""));
    let _gw = Gateway::start(bin(), cfg);
    let admin = addr(admin_port);
    let mut client = TcpStream::connect(addr(port)).await.expect("connect");
    client.write_all(b"hi").await.expect("send");
    let (mut server_side, _) = tokio::time::timeout(WAIT, upstream.accept()).await.expect("in time").expect("accept");
    let mut two = [0u8; 2];
    tokio::time::timeout(WAIT, server_side.read_exact(&mut two)).await.expect("in time").expect("bytes through");
    let id = wait_sessions(admin, "", 1).await[0]["id"].clone();
    assert_eq!(request(admin, "DELETE", &format!("/sessions/{id}"), None, &[]).await.status, 204);
    // Both ends see the close at once: the client's end and the upstream's.
    assert!(closed_without_data(&mut client).await, "the client side closed");
    let mut rest = Vec::new();
    let read =
        tokio::time::timeout(WAIT, server_side.read_to_end(&mut rest)).await.expect("the upstream side closed in time");
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    wait_sessions(admin, "", 0).await;
}
