//! Plugins through the real binary: phase order and counts, precedence,
//! ip-restriction, connection limits, Prometheus metrics, mtls-auth, bad
//! configurations, UDP sessions, and the kit's example plugin. The log
//! sinks are in `log_plugins.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::backend::{Backend, closed_without_data, connect_from, read_banner, tls_connect};
use test_support::certs::{TestCa, client_config, client_config_with_cert, server_config};
use test_support::gateway::{Gateway, GatewayConfig, certificate_yaml, yaml_block};
use test_support::{WAIT, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_run_once_each_in_order_for_tcp_tls_and_passthrough() {
    let ca = TestCa::new("phase CA");
    let term = ca.leaf(&["term.test"]);
    let pt = ca.leaf(&["pt.test"]);
    let plain = Backend::plain("plain").await;
    let tls_backend = Backend::tls("behind-passthrough", server_config(&pt, None)).await;
    let (p_plain, p_ssl) = (free_port(), free_port());
    let dir = test_support::gateway::TempDir::new();
    let (log_path, log_yaml) = file_log(dir.path());
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}services:
- name: plain-svc
  url: tcp://{plain_addr}
  routes:
  - name: tcp-route
    protocols: [tcp]
    destinations: [{{port: {p_plain}}}]
  - name: tls-route
    protocols: [tls]
    snis: [term.test]
  - name: strict-route
    protocols: [tcp]
    destinations: [{{ip: 127.0.0.1, port: {p_plain}}}]
    sources: [{{ip: 127.0.0.2}}]
    plugins:
    - name: tag-session
      config: {{tag: strict, require_sni: true}}
- name: pt-svc
  url: tcp://{pt_addr}
  routes:
  - name: pt-route
    protocols: [tls_passthrough]
    snis: [pt.test]
plugins:
- name: tag-session
  config: {{tag: global}}
{log_yaml}"#,
        certificate_yaml(&term, &["term.test"]),
        pt_addr = tls_backend.addr,
        plain_addr = plain.addr,
    );
    let cfg = GatewayConfig::new(format!("127.0.0.1:{p_plain}, 127.0.0.1:{p_ssl} ssl"), yaml)
        .setting("plugins", "[\"bundled\", \"tag-session\"]");
    let _gw = Gateway::start(bin(), cfg);

    assert_eq!(echo_session(addr(p_plain), b"tcp").await, "plain");
    let e = wait_entry(&log_path, |e| e["route"]["name"] == "tcp-route").await;
    assert_eq!(e["tag_session"]["phases"], json!(["preread", "log"]));
    assert_eq!(e["tag_session"]["tag"], "global");

    let mut s = tls_connect(addr(p_ssl), "term.test", client_config(&ca)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "plain");
    drop(s);
    let e = wait_entry(&log_path, |e| e["route"]["name"] == "tls-route").await;
    assert_eq!(e["tag_session"]["phases"], json!(["certificate", "preread", "log"]));
    assert_eq!(e["session"]["tls"]["version"], "TLSv1.3");
    assert_eq!(e["session"]["tls"]["client_verify"], "NONE");

    let mut s = tls_connect(addr(p_ssl), "pt.test", client_config(&ca)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "behind-passthrough");
    drop(s);
    let e = wait_entry(&log_path, |e| e["route"]["name"] == "pt-route").await;
    assert_eq!(e["tag_session"]["phases"], json!(["preread", "log"]));
    assert!(e["session"].get("tls").is_none(), "passthrough terminates nothing: {e}");

    // A rejection in preread still runs log, once; the route's instance
    // replaces the global one.
    let mut s = connect_from("127.0.0.2", addr(p_plain)).await;
    assert!(closed_without_data(&mut s).await);
    let e = wait_entry(&log_path, |e| e["route"]["name"] == "strict-route").await;
    assert_eq!(e["tag_session"]["phases"], json!(["preread", "log"]));
    assert_eq!(e["tag_session"]["tag"], "strict");
    assert_eq!(e["session"]["status"], 403);
    assert_eq!(e["close_reason"], "rejected by plugin");
    assert_eq!(e["tries"], json!([]), "the upstream was never contacted");

    // Every session logged exactly once by each instance.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(entries(&log_path).len(), 4, "{:#?}", entries(&log_path));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_beats_service_beats_global() {
    let backend = Backend::plain("b").await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let dir = test_support::gateway::TempDir::new();
    let (log_path, log_yaml) = file_log(dir.path());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: s1
  url: tcp://{backend}
  plugins:
  - name: tag-session
    config: {{tag: service}}
  routes:
  - name: r1
    protocols: [tcp]
    destinations: [{{port: {p1}}}]
    plugins:
    - name: tag-session
      config: {{tag: route}}
  - name: r2
    protocols: [tcp]
    destinations: [{{port: {p2}}}]
- name: s2
  url: tcp://{backend}
  routes:
  - name: r3
    protocols: [tcp]
    destinations: [{{port: {p3}}}]
plugins:
- name: tag-session
  config: {{tag: global}}
{log_yaml}"#,
        backend = backend.addr
    );
    let cfg = GatewayConfig::new(format!("127.0.0.1:{p1}, 127.0.0.1:{p2}, 127.0.0.1:{p3}"), yaml)
        .setting("plugins", "[\"bundled\", \"tag-session\"]");
    let _gw = Gateway::start(bin(), cfg);
    for (port, route, tag) in [(p1, "r1", "route"), (p2, "r2", "service"), (p3, "r3", "global")] {
        echo_session(addr(port), b"x").await;
        let e = wait_entry(&log_path, |e| e["route"]["name"] == route).await;
        assert_eq!(e["tag_session"]["tag"], tag, "{route}");
        assert_eq!(e["tag_session"]["phases"], json!(["preread", "log"]), "one instance per name");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_restriction_allows_and_denies_v4_and_v6() {
    let backend = Backend::plain("ok").await;
    let (p_deny, p_allow, p_v6, p_pp) = (free_port(), free_port(), free_port(), free_port());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{backend}
  routes:
  - name: deny-route
    protocols: [tcp]
    destinations: [{{port: {p_deny}}}]
    plugins:
    - name: ip-restriction
      config: {{deny: [127.0.0.2, "127.0.1.0/24"]}}
  - name: allow-route
    protocols: [tcp]
    destinations: [{{port: {p_allow}}}]
    plugins:
    - name: ip-restriction
      config: {{allow: ["127.0.0.3"], status: 503, message: go away}}
  - name: v6-route
    protocols: [tcp]
    destinations: [{{port: {p_v6}}}]
    plugins:
    - name: ip-restriction
      config: {{allow: ["::1/128"], deny: ["10.0.0.0/8"]}}
  - name: pp-route
    protocols: [tcp]
    destinations: [{{port: {p_pp}}}]
    plugins:
    - name: ip-restriction
      config: {{deny: ["10.0.0.0/8", "2001:db8::/32"]}}
"#,
        backend = backend.addr
    );
    let listen = format!(
        "127.0.0.1:{p_deny}, 127.0.0.1:{p_allow}, [::1]:{p_v6}, 127.0.0.1:{p_v6}, 127.0.0.1:{p_pp} proxy_protocol"
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(listen, yaml).setting("trusted_ips", "[\"127.0.0.1\"]"));

    // deny: listed addresses and ranges refused, others pass.
    let mut s = connect_from("127.0.0.2", addr(p_deny)).await;
    assert!(closed_without_data(&mut s).await);
    gw.wait_log(&["127.0.0.2:", " 403 ", "route=deny-route", "rejected by plugin"]).await;
    let mut s = connect_from("127.0.1.9", addr(p_deny)).await;
    assert!(closed_without_data(&mut s).await);
    let mut s = connect_from("127.0.0.4", addr(p_deny)).await;
    assert_eq!(read_banner(&mut s).await.unwrap(), "ok");

    // allow: only the listed address; the configured status is logged, and
    // no message reaches the client (status 400 and above).
    let mut s = connect_from("127.0.0.3", addr(p_allow)).await;
    assert_eq!(read_banner(&mut s).await.unwrap(), "ok");
    let mut s = connect_from("127.0.0.1", addr(p_allow)).await;
    assert!(closed_without_data(&mut s).await);
    gw.wait_log(&["127.0.0.1:", " 503 ", "route=allow-route", "ip-restriction: go away"]).await;

    // IPv6: ::1 allowed; an IPv4 client of the same route is not in the allow list.
    let mut s = TcpStream::connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, p_v6))).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "ok");
    drop(s);
    let mut s = TcpStream::connect(addr(p_v6)).await.unwrap();
    assert!(closed_without_data(&mut s).await);
    gw.wait_log(&["[::1]:", " 200 ", "route=v6-route"]).await;

    // Behind a load balancer, the PROXY header's source is the client.
    let mut s = TcpStream::connect(addr(p_pp)).await.unwrap();
    s.write_all(format!("PROXY TCP4 10.1.2.3 127.0.0.1 5555 {p_pp}\r\n").as_bytes()).await.unwrap();
    assert!(closed_without_data(&mut s).await);
    gw.wait_log(&["10.1.2.3:5555", " 403 ", "proxied_by=127.0.0.1"]).await;
    let mut s = TcpStream::connect(addr(p_pp)).await.unwrap();
    s.write_all(format!("PROXY TCP6 2001:db8::1 ::1 5556 {p_pp}\r\n").as_bytes()).await.unwrap();
    assert!(closed_without_data(&mut s).await);
    gw.wait_log(&["[2001:db8::1]:5556", " 403 "]).await;
    let mut s = TcpStream::connect(addr(p_pp)).await.unwrap();
    s.write_all(format!("PROXY TCP4 192.0.2.7 127.0.0.1 5557 {p_pp}\r\n").as_bytes()).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "ok");
    assert_eq!(backend.accepted(), 4, "refused sessions never reach the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_enforced_and_released() {
    let backend = Backend::plain("lim").await;
    let port = free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{backend}
  routes:
  - name: limited
    protocols: [tcp]
    destinations: [{{port: {port}}}]
plugins:
- name: connection-limit
  config: {{max_sessions: 2}}
"#,
        backend = backend.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}, 127.0.0.5:{port}"), yaml));
    let mut a = TcpStream::connect(addr(port)).await.unwrap();
    read_banner(&mut a).await.unwrap();
    let mut b = TcpStream::connect(addr(port)).await.unwrap();
    read_banner(&mut b).await.unwrap();
    let mut c = TcpStream::connect(addr(port)).await.unwrap();
    assert!(closed_without_data(&mut c).await, "a third session from the same address is refused");
    gw.wait_log(&[" 503 ", "route=limited", "connection-limit"]).await;
    assert_eq!(backend.accepted(), 2);
    // Another address has its own count (limit_by ip).
    let mut other = connect_from("127.0.0.5", SocketAddr::from(([127, 0, 0, 5], port))).await;
    read_banner(&mut other).await.unwrap();

    // Closing one gives its place back.
    drop(a);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut d = TcpStream::connect(addr(port)).await.unwrap();
        if read_banner(&mut d).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the count was not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_limit_rejects_or_delays() {
    let backend = Backend::plain("rate").await;
    let (p_reject, p_delay) = (free_port(), free_port());
    let dir = test_support::gateway::TempDir::new();
    let (log_path, log_yaml) = file_log(dir.path());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{backend}
  routes:
  - name: rejecting
    protocols: [tcp]
    destinations: [{{port: {p_reject}}}]
    plugins:
    - name: connection-rate-limit
      config: {{rate: 2, window: minute, limit_by: route}}
  - name: delaying
    protocols: [tcp]
    destinations: [{{port: {p_delay}}}]
    plugins:
    - name: connection-rate-limit
      config: {{rate: 2, window: second, action: delay, limit_by: global}}
plugins:
{log_yaml}"#,
        backend = backend.addr
    );
    let _gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{p_reject}, 127.0.0.1:{p_delay}"), yaml));
    echo_session(addr(p_reject), b"1").await;
    echo_session(addr(p_reject), b"2").await;
    let mut s = TcpStream::connect(addr(p_reject)).await.unwrap();
    assert!(closed_without_data(&mut s).await, "the third new session in a minute is refused");
    let e = wait_entry(&log_path, |e| e["session"]["status"] == 503).await;
    assert_eq!(e["connection_rate_limit"]["rejected"], true);

    // Four sessions at once with a burst of two: all served, some delayed
    // (none only if the four arrivals took over a second).
    let mut tasks = Vec::new();
    for i in 0..4u8 {
        tasks.push(tokio::spawn(async move { echo_session(addr(p_delay), &[b'a' + i]).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), "rate");
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let delayed = entries(&log_path)
            .iter()
            .filter(|e| e["route"]["name"] == "delaying" && e["connection_rate_limit"]["delayed_ms"].as_u64() > Some(0))
            .count();
        let done = entries(&log_path).iter().filter(|e| e["route"]["name"] == "delaying").count();
        if done == 4 {
            assert!(delayed >= 1, "expected delayed sessions: {:#?}", entries(&log_path));
            break;
        }
        assert!(Instant::now() < deadline, "expected four sessions logged: {:#?}", entries(&log_path));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_status_listen() {
    let backend = Backend::plain("m").await;
    let (port, status) = (free_port(), free_port());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: msvc
  url: tcp://{backend}
  routes:
  - name: mroute
    protocols: [tcp]
    destinations: [{{port: {port}}}]
    plugins:
    - name: ip-restriction
      config: {{deny: [127.0.0.9]}}
upstreams:
- name: pool
  targets:
  - target: {backend}
plugins:
- name: prometheus
"#,
        backend = backend.addr
    );
    let cfg = GatewayConfig::new(format!("127.0.0.1:{port}"), yaml)
        .setting("status_listen", &format!("\"127.0.0.1:{status}\""));
    let gw = Gateway::start(bin(), cfg);
    echo_session(addr(port), b"12345").await;
    echo_session(addr(port), b"12345").await;
    let mut s = connect_from("127.0.0.9", addr(port)).await;
    assert!(closed_without_data(&mut s).await);
    gw.wait_log(&["127.0.0.9", " 403 "]).await;

    let deadline = Instant::now() + WAIT;
    let samples = loop {
        let resp = test_support::http::get(addr(status), "/metrics").await;
        assert_eq!(resp.status, 200);
        let body = String::from_utf8_lossy(&resp.body).into_owned();
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
        let value = |name: &str, labels: &[(&str, &str)]| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
                .map(|s| s.value.clone())
        };
        if value("kong_stream_sessions_total", &[("code", "200"), ("route", "mroute")])
            == Some(prometheus_parse::Value::Counter(2.0))
        {
            break scrape;
        }
        assert!(Instant::now() < deadline, "metrics did not show the sessions:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let find = |name: &str, labels: &[(&str, &str)]| {
        samples
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .value
            .clone()
    };
    use prometheus_parse::Value as V;
    assert_eq!(
        find("kong_stream_sessions_total", &[("code", "403"), ("source", "exit"), ("service", "msvc")]),
        V::Counter(1.0)
    );
    assert_eq!(find("kong_bandwidth_bytes", &[("direction", "ingress"), ("route", "mroute")]), V::Counter(10.0));
    match find("kong_session_duration_ms", &[("route", "mroute")]) {
        V::Histogram(h) => assert_eq!(h.last().map(|b| b.count), Some(3.0)),
        other => panic!("not a histogram: {other:?}"),
    }
    assert_eq!(
        find("kong_upstream_target_health", &[("upstream", "pool"), ("state", "healthchecks_off")]),
        V::Gauge(1.0)
    );
    assert_eq!(find("strait_plugin_rejections_total", &[]), V::Counter(1.0));
    assert_eq!(find("strait_upstream_connect_attempts_total", &[("result", "success")]), V::Counter(2.0));
    assert!(matches!(find("strait_sessions_active", &[]), V::Gauge(_)));
    // /status is served there too.
    let resp = test_support::http::get(addr(status), "/status").await;
    assert_eq!(resp.status, 200);
    assert!(resp.json()["server"]["sessions_accepted"].as_u64() >= Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_auth_accepts_good_client_certificates_only() {
    let server_ca = TestCa::new("server CA");
    let client_ca = TestCa::new("client CA");
    let other_ca = TestCa::new("other CA");
    let leaf = server_ca.leaf(&["secure.test"]);
    let good = client_ca.leaf(&["alice.clients.test"]);
    let unlisted = client_ca.leaf(&["mallory.clients.test"]);
    let foreign = other_ca.leaf(&["alice.clients.test"]);
    let backend = Backend::plain("secured").await;
    let (port, mixed) = (free_port(), free_port());
    let ca_id = "5d8e4b1c-0c55-4d4e-9d0c-2f8a3b1e7a10";
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}ca_certificates:
- id: {ca_id}
  cert: |
{}services:
- url: tcp://{backend}
  routes:
  - name: mtls-route
    protocols: [tls]
    snis: [secure.test]
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [{ca_id}]
        allowed_names: [alice.clients.test]
  - name: mixed-route
    protocols: [tcp, tls]
    destinations: [{{port: {mixed}}}]
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [{ca_id}]
"#,
        certificate_yaml(&leaf, &["secure.test"]),
        yaml_block(&client_ca.pem.cert, 4),
        backend = backend.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} ssl, 127.0.0.1:{mixed}"), yaml));
    let to = addr(port);

    let mut ok = tls_connect(to, "secure.test", client_config_with_cert(&server_ca, &good)).await.unwrap();
    assert_eq!(read_banner(&mut ok).await.unwrap(), "secured");
    drop(ok);
    gw.wait_log(&[" 200 ", "route=mtls-route"]).await;

    // TLS 1.3 clients learn of the refusal on their first read.
    for (who, config) in [
        ("no certificate", client_config(&server_ca)),
        ("another CA", client_config_with_cert(&server_ca, &foreign)),
        ("a name not allowed", client_config_with_cert(&server_ca, &unlisted)),
    ] {
        match tls_connect(to, "secure.test", config).await {
            Err(_) => {}
            Ok(mut s) => {
                let mut b = [0u8; 1];
                let r = tokio::time::timeout(WAIT, s.read(&mut b)).await.expect("no answer in time");
                assert!(matches!(r, Err(_) | Ok(0)), "{who}: the session must not reach the upstream");
            }
        }
    }
    // A route that also serves plain TCP: a client without TLS is refused
    // by mtls-auth itself (it fails closed).
    let mut plain = TcpStream::connect(addr(mixed)).await.unwrap();
    plain.write_all(b"PING\r\n").await.unwrap();
    assert!(closed_without_data(&mut plain).await);
    gw.wait_log(&[" 403 ", "route=mixed-route", "a verified client certificate is required"]).await;
    let mut tls = tls_connect(addr(mixed), "secure.test", client_config_with_cert(&server_ca, &good)).await.unwrap();
    assert_eq!(read_banner(&mut tls).await.unwrap(), "secured");

    let deadline = Instant::now() + WAIT;
    while gw.log_lines().iter().filter(|l| l.contains("tls handshake failed")).count() < 3 {
        assert!(Instant::now() < deadline, "refusals not logged:\n{}", gw.log_lines().join("\n"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(backend.accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_mtls_auth_says_which_routes_it_closes_to_plain_sessions() {
    let client_ca = TestCa::new("client CA");
    let backend = Backend::plain("secured").await;
    let port = free_port();
    let ca_id = "5d8e4b1c-0c55-4d4e-9d0c-2f8a3b1e7a10";
    let yaml = format!(
        r#"_format_version: "3.0"
ca_certificates:
- id: {ca_id}
  cert: |
{}plugins:
- name: mtls-auth
  config:
    ca_certificates: [{ca_id}]
services:
- url: tcp://{backend}
  routes:
  - name: plain-route
    protocols: [tcp]
    destinations: [{{port: {port}}}]
"#,
        yaml_block(&client_ca.pem.cert, 4),
        backend = backend.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut plain = TcpStream::connect(addr(port)).await.unwrap();
    plain.write_all(b"PING\r\n").await.unwrap();
    assert!(closed_without_data(&mut plain).await);
    gw.wait_log(&[" 403 ", "route=plain-route", "a verified client certificate is required"]).await;
    let stderr = gw.stderr();
    assert!(
        stderr.contains("a global mtls-auth refuses") && stderr.contains("first=plain-route"),
        "no warning naming the route:\n{stderr}"
    );
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_plugin_configs_are_refused_with_the_field_named() {
    let backend = Backend::plain("x").await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n- name: s\n  url: tcp://{}\n  routes:\n  - name: r\n    protocols: [tcp]\n    destinations: [{{port: {port}}}]\n",
        backend.addr
    );
    let cfg = GatewayConfig::new(format!("127.0.0.1:{port}"), yaml)
        .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""))
        .setting("database", "\"sqlite\"");
    let _gw = Gateway::start(bin(), cfg);
    let post = |body: Value| async move { test_support::http::send_json(addr(admin), "POST", "/plugins", &body).await };

    let r = post(json!({"name": "ip-restriction", "config": {"allow": ["10.0.0.300"], "bogus": 1}})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["code"], 2);
    assert_eq!(j["fields"]["config"]["allow"], json!(["invalid ip or cidr range: '10.0.0.300'"]));
    assert_eq!(j["fields"]["config"]["bogus"], "unknown field");

    let r = post(json!({"name": "ip-restriction", "config": {}})).await;
    assert_eq!(r.status, 400);
    assert!(
        String::from_utf8_lossy(&r.body).contains("at least one of these fields must be non-empty"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    let r = post(json!({"name": "connection-limit", "config": {"max_sessions": 0, "limit_by": "user"}})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["fields"]["config"]["max_sessions"], "value should be between 1 and 4294967295");
    assert_eq!(r.json()["fields"]["config"]["limit_by"], "expected one of: ip, route, service, global");

    let r = post(json!({"name": "no-such-plugin"})).await;
    assert_eq!(r.status, 400);
    assert!(
        String::from_utf8_lossy(&r.body).contains("plugin 'no-such-plugin' not enabled"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    let r = post(json!({"name": "mtls-auth", "route": {"name": "r"}, "config": {"ca_certificates": ["5d8e4b1c-0c55-4d4e-9d0c-2f8a3b1e7a10"]}})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        String::from_utf8_lossy(&r.body).contains("no CA certificate with id"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    let r = post(json!({"name": "ip-restriction", "route": {"name": "nope"}, "config": {"deny": ["1.2.3.4"]}})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // An HTTP-only plugin can never run on a stream route (Kong's check).
    let r = post(json!({"name": "key-auth", "route": {"name": "r"}})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["fields"]["protocols"], "must match the associated route's protocols");
    // A stream protocol the plugin does not serve.
    let r = post(json!({"name": "tcp-log", "protocols": ["tcp", "quic"], "config": {"host": "h", "port": 1}})).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));

    // A good one lands with its defaults filled in, and applies at once.
    let r = post(json!({"name": "ip-restriction", "route": {"name": "r"}, "config": {"deny": ["127.0.0.1"]}})).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(j["config"], json!({"allow": null, "deny": ["127.0.0.1"], "status": null, "message": null}));
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    assert!(closed_without_data(&mut s).await);
    assert_eq!(backend.accepted(), 0);

    // Kong's plugin schema endpoint (decK reads it to fill defaults).
    let schema = test_support::http::get(addr(admin), "/schemas/plugins/connection-limit").await.json();
    let config = schema["fields"].as_array().unwrap().iter().find_map(|f| f.get("config")).unwrap().clone();
    assert_eq!(config["fields"][0]["max_sessions"]["required"], true, "{config}");
    assert_eq!(config["fields"][1]["limit_by"]["default"], "ip", "{config}");
    assert_eq!(test_support::http::get(addr(admin), "/schemas/plugins/nope").await.status, 404);

    // One instance of a plugin per scope, as Kong's unique key.
    let r = post(json!({"name": "ip-restriction", "route": {"name": "r"}, "config": {"deny": ["10.0.0.1"]}})).await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("UNIQUE violation"), "{}", String::from_utf8_lossy(&r.body));
    // ... and the first still applies.
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    assert!(closed_without_data(&mut s).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_run_plugins() {
    let backend = test_support::backend::UdpBackend::start("u").await;
    let port = free_port();
    let dir = test_support::gateway::TempDir::new();
    let (log_path, log_yaml) = file_log(dir.path());
    let log_yaml = format!("{log_yaml}    interval: 1\n");
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: dns
  url: udp://{backend}
  routes:
  - name: udp-route
    protocols: [udp]
    sources: [{{ip: 127.0.0.0/8}}]
    plugins:
    - name: ip-restriction
      config: {{deny: [127.0.0.2]}}
plugins:
{log_yaml}"#,
        backend = backend.addr
    );
    let _gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} udp"), yaml));
    let ok = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    ok.send_to(b"hi", addr(port)).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, ok.recv(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"u:hi");
    let denied = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    denied.send_to(b"hi", addr(port)).await.unwrap();
    let e = wait_entry(&log_path, |e| e["client_ip"] == "127.0.0.2").await;
    assert_eq!(e["session"]["status"], 403);
    assert!(tokio::time::timeout(Duration::from_millis(300), denied.recv(&mut buf)).await.is_err());
    // The open session reports its progress while it lasts.
    let e = wait_entry(&log_path, |e| e["progress"] == true).await;
    assert_eq!((&e["session"]["received"], &e["session"]["sent"]), (&json!(2), &json!(4)), "{e}");
    assert_eq!(e["route"]["name"], "udp-route");
}
