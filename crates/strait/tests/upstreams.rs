//! Upstreams and targets through the real binary: balancing algorithms,
//! retries, DNS (with a live test DNS server), active and passive health
//! checks, the health endpoints and manual overrides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::WAIT;
use test_support::backend::{Backend, connect_from, read_banner};
use test_support::certs::{TestCa, server_config};
use test_support::dns::{Answer, DnsServer};
use test_support::gateway::{Gateway, GatewayConfig, TempDir};
use test_support::http::{get, request, send_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

/// A gateway on `port` with the Admin API on a free port; DB-less unless
/// `settings` say otherwise.
fn start(port: u16, yaml: String, settings: &[(&str, String)]) -> (Gateway, SocketAddr) {
    let admin_port = test_support::free_port();
    let mut cfg = GatewayConfig::new(format!("127.0.0.1:{port}"), yaml)
        .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\""));
    for (k, v) in settings {
        cfg = cfg.setting(k, v);
    }
    let gw = Gateway::start(bin(), cfg);
    (gw, format!("127.0.0.1:{admin_port}").parse().expect("admin address"))
}

/// An empty gateway with the embedded store, written through the Admin API.
fn start_with_store(port: u16) -> (TempDir, Gateway, SocketAddr) {
    let prefix = TempDir::new();
    let (gw, admin) = start(
        port,
        "_format_version: \"3.0\"\n".into(),
        &[("database", "\"sqlite\"".into()), ("prefix", format!("{:?}", prefix.path()))],
    );
    (prefix, gw, admin)
}

/// One short session from `from`: the serving backend's name, then a clean close.
async fn banner_from(from: &str, port: u16) -> String {
    let mut s = connect_from(from, format!("127.0.0.1:{port}").parse().expect("addr")).await;
    let name = read_banner(&mut s).await.expect("banner");
    let _ = s.shutdown().await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await;
    name
}

async fn banner(port: u16) -> String {
    banner_from("127.0.0.1", port).await
}

/// `n` short sessions one after another: the serving backends' names, in order.
async fn banners(port: u16, n: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        names.push(banner(port).await);
    }
    names
}

/// Waits (bounded) until the access log has at least `n` lines.
async fn wait_lines(gw: &Gateway, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while gw.log_lines().len() < n {
        assert!(tokio::time::Instant::now() < deadline, "only {} log lines, wanted {n}", gw.log_lines().len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

async fn health(admin: SocketAddr, upstream: &str) -> Value {
    let r = get(admin, &format!("/upstreams/{upstream}/health")).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    r.json()
}

/// The health of `target`'s address `addr` (or of the target when `None`).
fn health_in(report: &Value, target: &str, addr: Option<SocketAddr>) -> String {
    let t = report["data"]
        .as_array()
        .and_then(|d| d.iter().find(|t| t["target"] == target))
        .unwrap_or_else(|| panic!("no target {target} in {report}"));
    let h = match addr {
        None => &t["health"],
        Some(a) => &t["data"]["addresses"]
            .as_array()
            .and_then(|l| l.iter().find(|x| x["ip"] == a.ip().to_string() && x["port"] == a.port()))
            .unwrap_or_else(|| panic!("no address {a} in {t}"))["health"],
    };
    h.as_str().unwrap_or_default().to_owned()
}

/// Polls the health endpoint (bounded) until `target` reports `want`.
async fn wait_health(admin: SocketAddr, upstream: &str, target: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let report = health(admin, upstream).await;
        if health_in(&report, target, None) == want {
            return report;
        }
        assert!(tokio::time::Instant::now() < deadline, "{target} never became {want}: {report:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pool(port: u16, algorithm: &str, targets: &[(SocketAddr, u16)], extra: &str) -> String {
    let targets: String =
        targets.iter().map(|(a, w)| format!("  - {{target: \"{a}\", weight: {w}}}\n")).collect::<Vec<_>>().join("");
    format!(
        r#"_format_version: "3.0"
upstreams:
- name: pool
  algorithm: {algorithm}
{extra}
  targets:
{targets}
services:
- name: svc
  host: pool
  port: 1
  protocol: tcp
  retries: 3
  connect_timeout: 2000
  routes:
  - name: r
    protocols: [tcp]
    destinations: [{{port: {port}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_follows_the_weights() {
    let (a, b, c) = (Backend::plain("a").await, Backend::plain("b").await, Backend::plain("c").await);
    let port = test_support::free_port();
    let yaml = pool(port, "round-robin", &[(a.addr, 100), (b.addr, 200), (c.addr, 300)], "");
    let (_gw, _) = start(port, yaml, &[]);
    let names = banners(port, 300).await;
    let n = count(&names);
    // Expected 50/100/150; the schedule is exact, the tolerance is ±10%.
    for (name, want) in [("a", 50), ("b", 100), ("c", 150)] {
        let got = n.get(name).copied().unwrap_or(0);
        assert!(got.abs_diff(want) <= want / 10, "{name}: {got} of 300, want {want}: {n:?}");
    }
    // Smooth: the heaviest target never takes more than 3 turns in a row.
    let longest = names.windows(4).filter(|w| w.iter().all(|x| x == "c")).count();
    assert_eq!(longest, 0, "{:?}", &names[..12]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_prefers_the_idle_target() {
    let (a, b) = (Backend::plain("a").await, Backend::plain("b").await);
    let port = test_support::free_port();
    let (gw, admin) = start(port, pool(port, "least-connections", &[(a.addr, 100), (b.addr, 100)], ""), &[]);
    // A long session holds one target.
    let mut long = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let held = read_banner(&mut long).await.expect("banner");
    let other = if held == "a" { "b" } else { "a" };
    // Every short session, one at a time, goes to the other one.
    for i in 0..10 {
        assert_eq!(banner(port).await, other, "short session {i}");
        wait_lines(&gw, i + 1).await;
    }
    let report = health(admin, "pool").await;
    let held_addr = if held == "a" { a.addr } else { b.addr };
    let t = report["data"].as_array().unwrap().iter().find(|t| t["target"] == held_addr.to_string()).unwrap();
    assert_eq!(t["data"]["addresses"][0]["active_sessions"], 1, "{t}");
    drop(long);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_clients_and_moves_few_on_a_new_target() {
    let backends =
        [Backend::plain("a").await, Backend::plain("b").await, Backend::plain("c").await, Backend::plain("d").await];
    let port = test_support::free_port();
    let three: Vec<(SocketAddr, u16)> = backends[..3].iter().map(|b| (b.addr, 100)).collect();
    let (_gw, admin) = start(port, pool(port, "consistent-hashing", &three, "  hash_on: ip"), &[]);
    let clients: Vec<String> = (1..=48).map(|i| format!("127.0.2.{i}")).collect();
    let mut before = Vec::new();
    for c in &clients {
        before.push(banner_from(c, port).await);
    }
    assert!(count(&before).len() >= 2, "48 clients all on one target: {before:?}");
    for (c, want) in clients.iter().zip(&before).take(12) {
        assert_eq!(&banner_from(c, port).await, want, "client {c} moved without a change");
    }

    // A fourth target: only the clients it takes over move.
    let four: Vec<(SocketAddr, u16)> = backends.iter().map(|b| (b.addr, 100)).collect();
    let r = send_json(
        admin,
        "POST",
        "/config",
        &json!({"config": pool(port, "consistent-hashing", &four, "  hash_on: ip")}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let mut after = Vec::new();
    for c in &clients {
        after.push(banner_from(c, port).await);
    }
    let moved: Vec<_> = before.iter().zip(&after).filter(|(x, y)| x != y).collect();
    assert!(moved.iter().all(|(_, to)| to.as_str() == "d"), "clients moved between old targets: {moved:?}");
    // About a quarter should move; anything from 1 to 22 of 48 passes.
    assert!((1..=22).contains(&moved.len()), "{} of 48 moved", moved.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_move_past_a_dead_target_and_every_try_is_logged() {
    let live = Backend::plain("live").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", test_support::free_port()).parse().unwrap();
    let port = test_support::free_port();
    let gone_port = test_support::free_port();
    let empty_port = test_support::free_port();
    let mut yaml = pool(port, "round-robin", &[(dead, 100), (live.addr, 100)], "");
    yaml.push_str(&format!(
        r#"- name: all-dead
  url: tcp://dead-pool:1
  retries: 2
  routes:
  - protocols: [tcp]
    destinations: [{{port: {gone_port}}}]
- name: no-targets
  url: tcp://empty-pool:1
  routes:
  - protocols: [tcp]
    destinations: [{{port: {empty_port}}}]
"#
    ));
    yaml = yaml.replace(
        "services:",
        &format!("- name: dead-pool\n  targets: [{{target: \"{dead}\"}}]\n- name: empty-pool\nservices:"),
    );
    let admin_port = test_support::free_port();
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port}, 127.0.0.1:{gone_port}, 127.0.0.1:{empty_port}"), yaml)
            .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\"")),
    );
    for _ in 0..6 {
        assert_eq!(banner(port).await, "live");
    }
    let line = gw.wait_log(&["failed_tries=", &dead.to_string()]).await;
    assert!(line.contains("tries=2") && line.contains(" 200 "), "{line}");
    assert!(line.to_lowercase().contains("connection refused"), "{line}");

    // Every try failed: 502, with all three attempts in the log.
    let mut s = TcpStream::connect(("127.0.0.1", gone_port)).await.unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(tokio::time::timeout(WAIT, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_))));
    let line = gw.wait_log(&[" 502 ", "service=all-dead"]).await;
    assert!(line.contains("tries=3") && line.contains("reason=\"connect failed\""), "{line}");
    // Nothing to try: 503, as Kong's "failure to get a peer".
    let mut s = TcpStream::connect(("127.0.0.1", empty_port)).await.unwrap();
    assert!(matches!(tokio::time::timeout(WAIT, s.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_))));
    let line = gw.wait_log(&[" 503 ", "service=no-targets"]).await;
    assert!(line.contains("failure to get a peer") && line.contains("tries=0"), "{line}");
}

fn active_checks(kind: &str) -> String {
    format!(
        r#"  healthchecks:
    active:
      type: {kind}
      timeout: 1
      https_verify_certificate: false
      healthy: {{interval: 0.2, successes: 1}}
      unhealthy: {{interval: 0.2, tcp_failures: 1, timeouts: 1}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_eject_a_stopped_backend_and_restore_it() {
    let a = Backend::plain("a").await;
    let b = Backend::plain("b").await;
    let a_addr = a.addr;
    let port = test_support::free_port();
    let yaml = pool(port, "round-robin", &[(a.addr, 100), (b.addr, 100)], &active_checks("tcp"));
    let (_gw, admin) = start(port, yaml, &[]);
    let target = a_addr.to_string();
    wait_health(admin, "pool", &target, "HEALTHY").await;

    drop(a);
    let report = wait_health(admin, "pool", &target, "UNHEALTHY").await;
    let t = report["data"].as_array().unwrap().iter().find(|t| t["target"] == target).unwrap();
    let reason = t["data"]["addresses"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("TCP failures"), "{t}");
    for _ in 0..8 {
        assert_eq!(banner(port).await, "b", "the ejected target gets no sessions");
    }

    let _a = Backend::plain_at("a", a_addr).await;
    let report = wait_health(admin, "pool", &target, "HEALTHY").await;
    assert!(report.to_string().contains("1 successes"), "restored by a probe: {report:#}");
    let names = banners(port, 8).await;
    assert!(names.iter().any(|n| n == "a"), "the restored target serves again: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_probes_complete_a_handshake_and_catch_an_expired_certificate() {
    let ca = TestCa::new("probe CA");
    let good = Backend::tls("good", server_config(&ca.leaf(&["127.0.0.1"]), None)).await;
    let expired = Backend::tls("expired", server_config(&ca.expired_leaf(&["127.0.0.1"]), None)).await;
    let port = test_support::free_port();
    let yaml = pool(port, "round-robin", &[(good.addr, 100), (expired.addr, 100)], &active_checks("tls"));
    let (_gw, admin) = start(port, yaml, &[]);
    wait_health(admin, "pool", &good.addr.to_string(), "HEALTHY").await;
    let report = wait_health(admin, "pool", &expired.addr.to_string(), "UNHEALTHY").await;
    let text = report.to_string();
    assert!(text.contains("certificate expired"), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_checks_eject_a_target_that_refuses_connections() {
    let live = Backend::plain("live").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", test_support::free_port()).parse().unwrap();
    let port = test_support::free_port();
    let passive = "  healthchecks:\n    passive:\n      type: tcp\n      unhealthy: {tcp_failures: 2}";
    let (gw, admin) = start(port, pool(port, "round-robin", &[(dead, 100), (live.addr, 100)], passive), &[]);
    let target = dead.to_string();
    assert_eq!(health_in(&health(admin, "pool").await, &target, None), "HEALTHY");
    // Round-robin sends every other session to the dead target first.
    let mut n = 0;
    while health_in(&health(admin, "pool").await, &target, None) == "HEALTHY" {
        assert_eq!(banner(port).await, "live");
        n += 1;
        assert!(n <= 8, "the refusing target was never ejected");
    }
    let report = health(admin, "pool").await;
    assert!(report.to_string().contains("2 TCP failures"), "{report:#}");
    wait_lines(&gw, n).await;
    let seen = gw.log_lines().len();
    for _ in 0..6 {
        assert_eq!(banner(port).await, "live");
    }
    wait_lines(&gw, seen + 6).await;
    let fresh = &gw.log_lines()[seen..];
    assert!(fresh.iter().all(|l| !l.contains("failed_tries")), "ejected target still tried: {fresh:#?}");

    // A change to the same upstream (its passive thresholds) keeps the
    // session-derived state: nothing here could eject it again.
    let changed = "  healthchecks:\n    passive:\n      type: tcp\n      unhealthy: {tcp_failures: 3}";
    let r = send_json(
        admin,
        "POST",
        "/config",
        &json!({"config": pool(port, "round-robin", &[(dead, 100), (live.addr, 100)], changed)}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let report = health(admin, "pool").await;
    assert_eq!(health_in(&report, &target, None), "UNHEALTHY", "{report:#}");
    assert!(report.to_string().contains("2 TCP failures"), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_unhealthy_targets_undo_a_passive_ejection() {
    let live = Backend::plain("live").await;
    let flaky: SocketAddr = format!("127.0.0.1:{}", test_support::free_port()).parse().unwrap();
    let port = test_support::free_port();
    // Healthy targets are not probed (interval 0); unhealthy ones are.
    let checks = r#"  healthchecks:
    active:
      type: tcp
      healthy: {interval: 0, successes: 1}
      unhealthy: {interval: 0.2}
    passive:
      unhealthy: {tcp_failures: 1}"#;
    let (_gw, admin) = start(port, pool(port, "round-robin", &[(flaky, 100), (live.addr, 100)], checks), &[]);
    let target = flaky.to_string();
    while health_in(&health(admin, "pool").await, &target, None) == "HEALTHY" {
        assert_eq!(banner(port).await, "live");
    }
    let _back = Backend::plain_at("flaky", flaky).await;
    let report = wait_health(admin, "pool", &target, "HEALTHY").await;
    assert!(report.to_string().contains("1 successes"), "{report:#}");
    let names = banners(port, 6).await;
    assert!(names.iter().any(|n| n == "flaky"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_avoids_a_target_that_refuses() {
    let live = Backend::plain("live").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", test_support::free_port()).parse().unwrap();
    let port = test_support::free_port();
    let (gw, _) = start(port, pool(port, "latency", &[(dead, 100), (live.addr, 100)], ""), &[]);
    for _ in 0..2 {
        assert_eq!(banner(port).await, "live");
    }
    wait_lines(&gw, 2).await;
    for _ in 0..8 {
        assert_eq!(banner(port).await, "live");
    }
    wait_lines(&gw, 10).await;
    let later = &gw.log_lines()[2..];
    assert!(later.iter().all(|l| !l.contains("failed_tries")), "a refusing target counted as fast: {later:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_overrides_and_health_that_survives_other_changes() {
    let (a, b) = (Backend::plain("a").await, Backend::plain("b").await);
    let port = test_support::free_port();
    let (_prefix, _gw, admin) = start_with_store(port);
    let ok = |r: test_support::http::Response| {
        assert!(r.status == 201 || r.status == 200, "{} {:?}", r.status, r.json());
    };
    ok(send_json(admin, "POST", "/upstreams", &json!({"name": "pool"})).await);
    ok(send_json(admin, "POST", "/upstreams", &json!({"name": "other"})).await);
    for t in [a.addr, b.addr] {
        ok(send_json(admin, "POST", "/upstreams/pool/targets", &json!({"target": t.to_string()})).await);
    }
    ok(send_json(admin, "POST", "/services", &json!({"name": "svc", "host": "pool", "protocol": "tcp"})).await);
    ok(send_json(
        admin,
        "POST",
        "/services/svc/routes",
        &json!({"protocols": ["tcp"], "destinations": [{"port": port}]}),
    )
    .await);

    // No checks configured: Kong's HEALTHCHECKS_OFF, and nothing to set by hand.
    let (ta, tb) = (a.addr.to_string(), b.addr.to_string());
    assert_eq!(health_in(&health(admin, "pool").await, &ta, None), "HEALTHCHECKS_OFF");
    let r = request(admin, "PUT", &format!("/upstreams/pool/targets/{ta}/unhealthy"), None, &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["message"], "no healthchecker found for pool");
    let checks = json!({"healthchecks": {"passive": {"unhealthy": {"tcp_failures": 5}}}});
    ok(send_json(admin, "PATCH", "/upstreams/pool", &checks).await);
    assert_eq!(health_in(&health(admin, "pool").await, &ta, None), "HEALTHY");

    let r = request(admin, "PUT", &format!("/upstreams/pool/targets/{ta}/unhealthy"), None, &[]).await;
    assert_eq!(r.status, 204);
    let report = health(admin, "pool").await;
    assert_eq!(health_in(&report, &ta, None), "UNHEALTHY");
    assert!(report.to_string().contains("marked unhealthy through the Admin API"), "{report:#}");
    for _ in 0..6 {
        assert_eq!(banner(port).await, "b");
    }

    // A change to another upstream keeps this one's health.
    ok(send_json(admin, "PATCH", "/upstreams/other", &json!({"algorithm": "least-connections"})).await);
    ok(send_json(admin, "POST", "/upstreams/other/targets", &json!({"target": "127.0.0.1:1"})).await);
    // So does a change to this upstream's other target.
    ok(send_json(admin, "PATCH", &format!("/upstreams/pool/targets/{tb}"), &json!({"weight": 50})).await);
    assert_eq!(health_in(&health(admin, "pool").await, &ta, None), "UNHEALTHY");
    assert_eq!(banner(port).await, "b");

    // Back by address, then by target; unknown addresses and targets are 404.
    let r = request(admin, "PUT", &format!("/upstreams/pool/targets/{ta}/{ta}/healthy"), None, &[]).await;
    assert_eq!(r.status, 204);
    assert_eq!(health_in(&health(admin, "pool").await, &ta, Some(a.addr)), "HEALTHY");
    let r = request(admin, "PUT", &format!("/upstreams/pool/targets/{ta}/10.9.9.9:1/healthy"), None, &[]).await;
    assert_eq!(r.status, 404);
    let r = request(admin, "PUT", "/upstreams/pool/targets/10.9.9.9:1/healthy", None, &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(get(admin, "/upstreams/nope/health").await.status, 404);
    let names = banners(port, 6).await;
    assert!(names.iter().any(|n| n == "a"), "{names:?}");

    // The balancer as a whole.
    let r = get(admin, "/upstreams/pool/health?balancer_health=1").await.json();
    assert_eq!(r["data"]["health"], "HEALTHY", "{r}");
    assert_eq!(r["data"]["details"]["weight"]["total"], 150, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upstream_and_target_input_names_the_field() {
    let port = test_support::free_port();
    let (_prefix, _gw, admin) = start_with_store(port);
    let r = send_json(
        admin,
        "POST",
        "/upstreams",
        &json!({"name": "u", "healthchecks": {"active": {"timeout": "soon", "unhealthy": {"tcp_failures": 300}}}}),
    )
    .await;
    assert_eq!(r.status, 400);
    let f = &r.json()["fields"]["healthchecks"]["active"];
    assert_eq!(f["timeout"], "expected a number", "{:?}", r.json());
    assert_eq!(f["unhealthy"]["tcp_failures"], "value should be between 0 and 255");
    let r = send_json(admin, "POST", "/upstreams", &json!({"name": "u", "hash_on": "ip", "hash_fallback": "ip"})).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["fields"]["hash_fallback"].is_string(), "{:?}", r.json());

    assert_eq!(send_json(admin, "POST", "/upstreams", &json!({"name": "u"})).await.status, 201);
    let r = send_json(admin, "POST", "/upstreams/u/targets", &json!({"target": "10.0.0.1:80", "weight": 70000})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["fields"]["weight"], "value should be between 0 and 65535");
    let r = send_json(admin, "POST", "/upstreams/u/targets", &json!({"target": "not a host"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(send_json(admin, "POST", "/upstreams/u/targets", &json!({"target": "10.0.0.1:80"})).await.status, 201);
    let r = send_json(admin, "POST", "/upstreams/u/targets", &json!({"target": "10.0.0.1:80"})).await;
    assert_eq!(r.status, 409, "{:?}", r.json());
    // Nothing was lost.
    let list = get(admin, "/upstreams/u/targets").await.json();
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_resolve_through_dns_and_follow_ttl_and_srv() {
    let dns = DnsServer::start().await;
    let a = Backend::plain("a").await;
    let port_a = a.addr.port();
    // The same port on another loopback address: where the name moves to.
    let moved = Backend::plain_at("moved", format!("127.0.0.2:{port_a}").parse().unwrap()).await;
    let (s1, s2) = (Backend::plain("srv1").await, Backend::plain("srv2").await);
    dns.set("pool.test", "A", 1, vec![Answer::Ip("127.0.0.1".parse().unwrap())]);
    dns.set("svc.test", "A", 60, vec![Answer::Ip("127.0.0.1".parse().unwrap())]);
    dns.set(
        "_db._tcp.srv.test",
        "SRV",
        60,
        vec![
            Answer::Srv(10, 10, s1.addr.port(), "one.srv.test".into()),
            Answer::Srv(10, 30, s2.addr.port(), "two.srv.test".into()),
            // A higher priority value is a backup: not used while the others answer.
            Answer::Srv(20, 100, port_a, "pool.test".into()),
        ],
    );
    for n in ["one.srv.test", "two.srv.test"] {
        dns.set(n, "A", 60, vec![Answer::Ip("127.0.0.1".parse().unwrap())]);
    }

    let port = test_support::free_port();
    let (srv_port, svc_port) = (test_support::free_port(), test_support::free_port());
    let yaml = format!(
        r#"_format_version: "3.0"
upstreams:
- name: pool
  healthchecks: {{passive: {{unhealthy: {{tcp_failures: 5}}}}}}
  targets:
  - target: pool.test:{port_a}
  - target: missing.test:1
- name: srvpool
  targets:
  - target: _db._tcp.srv.test
services:
- name: svc
  url: tcp://pool:1
  routes: [{{protocols: [tcp], destinations: [{{port: {port}}}]}}]
- name: srv
  url: tcp://srvpool:1
  routes: [{{protocols: [tcp], destinations: [{{port: {srv_port}}}]}}]
- name: plain-name
  url: tcp://svc.test:{port_a}
  routes: [{{protocols: [tcp], destinations: [{{port: {svc_port}}}]}}]
"#
    );
    let admin_port = test_support::free_port();
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port}, 127.0.0.1:{srv_port}, 127.0.0.1:{svc_port}"), yaml)
            .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\""))
            .setting("dns_resolver", &format!("\"{}\"", dns.addr))
            .setting("dns_hostsfile", "\"/dev/null\""),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();

    assert_eq!(banner(port).await, "a");
    assert_eq!(banner(svc_port).await, "a", "a service host name resolves through the same DNS");
    let report = health(admin, "pool").await;
    let missing = report["data"].as_array().unwrap().iter().find(|t| t["target"] == "missing.test:1").unwrap();
    assert_eq!(missing["health"], "DNS_ERROR", "{missing}");
    assert!(missing["data"]["dns_error"].as_str().unwrap_or_default().contains("missing.test"), "{missing}");
    let pool_t = report["data"].as_array().unwrap().iter().find(|t| t["target"] == format!("pool.test:{port_a}"));
    assert_eq!(pool_t.unwrap()["data"]["dns"], "A");
    assert!(gw.stderr().contains("missing.test"), "the unresolvable target is logged:\n{}", gw.stderr());

    // The name moves; after its 1 s TTL new sessions follow it.
    dns.set("pool.test", "A", 1, vec![Answer::Ip("127.0.0.2".parse().unwrap())]);
    let deadline = tokio::time::Instant::now() + WAIT;
    while banner(port).await != "moved" {
        assert!(tokio::time::Instant::now() < deadline, "the new address was never used");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved.accepted() >= 1);

    // The name stops resolving: the last addresses keep serving (dns_stale_ttl).
    dns.remove("pool.test");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let report = health(admin, "pool").await;
        let t = report["data"].as_array().unwrap().iter().find(|t| t["target"] == format!("pool.test:{port_a}"));
        if t.is_some_and(|t| t["data"]["dns_error"].is_string()) {
            assert_eq!(t.unwrap()["health"], "HEALTHY", "{report:#}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failed refresh never showed: {report:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(banner(port).await, "moved");
    // A target without an address has nothing to mark.
    let r = request(admin, "PUT", "/upstreams/pool/targets/missing.test:1/unhealthy", None, &[]).await;
    assert_eq!(r.status, 404);

    // SRV: ports and weights from the records, lowest priority only.
    let names = banners(srv_port, 40).await;
    let n = count(&names);
    assert_eq!(n.get("a"), None, "the backup priority was used: {n:?}");
    let two = n.get("srv2").copied().unwrap_or(0);
    assert!((25..=35).contains(&two), "srv2 has weight 30 of 40: {n:?}");
    assert!(dns.queries().iter().any(|q| q == "_db._tcp.srv.test SRV"), "{:?}", dns.queries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_prefers_the_target_that_connects_faster() {
    let ca = TestCa::new("latency CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let fast = Backend::tls("fast", server_config(&leaf, None)).await;
    let slow = Backend::tls_slow("slow", server_config(&leaf, None), Duration::from_millis(150)).await;
    let port = test_support::free_port();
    // A `tls` service: an attempt's time includes the upstream handshake.
    let yaml = pool(port, "latency", &[(fast.addr, 100), (slow.addr, 100)], "")
        .replace("  protocol: tcp\n", "  protocol: tls\n  tls_verify: false\n");
    let (_gw, _) = start(port, yaml, &[]);
    // Each address is measured once first, then the faster one wins.
    let names = banners(port, 12).await;
    let n = count(&names[2..]);
    assert!(n.get("fast").copied().unwrap_or(0) >= 9, "{names:?}");
    assert!(slow.accepted() >= 1, "the slow target was never measured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probes_judge_the_status_line() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    // A health endpoint whose status the test sets.
    let status = Arc::new(AtomicU16::new(200));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let st = status.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let code = st.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut req = vec![0u8; 1024];
                let n = tokio::time::timeout(WAIT, s.read(&mut req)).await.ok().and_then(Result::ok).unwrap_or(0);
                let req = String::from_utf8_lossy(&req[..n]).into_owned();
                let code = if req.starts_with("GET /healthz HTTP/1.0\r\n") && req.contains("X-Probe: yes") {
                    code
                } else {
                    400
                };
                let _ = s.write_all(format!("HTTP/1.0 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            });
        }
    });
    let port = test_support::free_port();
    let checks = r#"  healthchecks:
    active:
      type: http
      http_path: /healthz
      headers: {X-Probe: ["yes"]}
      healthy: {interval: 0.2, successes: 1}
      unhealthy: {interval: 0.2, http_failures: 1}"#;
    let (_gw, admin) = start(port, pool(port, "round-robin", &[(addr, 100)], checks), &[]);
    let target = addr.to_string();
    wait_health(admin, "pool", &target, "HEALTHY").await;
    status.store(503, Ordering::SeqCst);
    let report = wait_health(admin, "pool", &target, "UNHEALTHY").await;
    assert!(report.to_string().contains("HTTP 503"), "{report:#}");
    status.store(200, Ordering::SeqCst);
    wait_health(admin, "pool", &target, "HEALTHY").await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_threshold_or_with_nothing_healthy_sessions_get_503() {
    let (a, b) = (Backend::plain("a").await, Backend::plain("b").await);
    let port = test_support::free_port();
    let checks = "  healthchecks: {threshold: 60, passive: {unhealthy: {tcp_failures: 5}}}";
    let yaml = pool(port, "round-robin", &[(a.addr, 100), (b.addr, 100)], checks);
    let (gw, admin) = start(port, yaml, &[]);
    assert!(["a", "b"].contains(&banner(port).await.as_str()));
    let put = |t: SocketAddr, state: &'static str| async move {
        let r = request(admin, "PUT", &format!("/upstreams/pool/targets/{t}/{state}"), None, &[]).await;
        assert_eq!(r.status, 204);
    };
    // Half the weight is healthy, below 60%: the whole upstream refuses.
    put(a.addr, "unhealthy").await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(tokio::time::timeout(WAIT, s.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_))));
    let line = gw.wait_log(&[" 503 ", "threshold"]).await;
    assert!(line.contains("tries=0"), "{line}");
    let r = get(admin, "/upstreams/pool/health?balancer_health=1").await.json();
    assert_eq!(r["data"]["health"], "UNHEALTHY", "{r}");
    assert_eq!(r["data"]["details"]["weight"]["available"], 100, "{r}");
    put(b.addr, "unhealthy").await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(matches!(tokio::time::timeout(WAIT, s.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_))));
    gw.wait_log(&[" 503 ", "every target is unhealthy"]).await;
    put(a.addr, "healthy").await;
    put(b.addr, "healthy").await;
    assert!(["a", "b"].contains(&banner(port).await.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_carries_the_health_state_over() {
    let live = Backend::plain("live").await;
    let dead: SocketAddr = format!("127.0.0.1:{}", test_support::free_port()).parse().unwrap();
    let port = test_support::free_port();
    // Passive checks only: nothing in the new generation could eject the
    // dead target again before a session tried it.
    let passive = "  healthchecks:\n    passive:\n      type: tcp\n      unhealthy: {tcp_failures: 1}";
    let (gw, admin) = start(port, pool(port, "round-robin", &[(dead, 100), (live.addr, 100)], passive), &[]);
    let target = dead.to_string();
    let mut n = 0;
    while health_in(&health(admin, "pool").await, &target, None) == "HEALTHY" {
        assert_eq!(banner(port).await, "live");
        n += 1;
        assert!(n <= 8, "the refusing target was never ejected");
    }
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    assert_eq!(health_in(&health(admin, "pool").await, &target, None), "UNHEALTHY", "the new generation knows");
    let seen = gw.log_lines().len();
    for _ in 0..4 {
        assert_eq!(banner(port).await, "live");
    }
    wait_lines(&gw, seen + 4).await;
    let fresh = &gw.log_lines()[seen..];
    assert!(fresh.iter().all(|l| !l.contains("failed_tries")), "the ejected target was tried again: {fresh:#?}");
}
