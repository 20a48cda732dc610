//! Cluster mode against a real PostgreSQL (a private server per test, so a
//! test can stop it): two gateway nodes and one database; propagation,
//! concurrent writes, an outage and its recovery, the local cache, node
//! identity, migrations from several processes, and start-up errors.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::WAIT;
use test_support::backend::{Backend, read_banner};
use test_support::gateway::{Gateway, GatewayConfig, TempDir};
use test_support::http::{get, send_json};
use test_support::pg::PgServer;
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

/// A node: its stream port, Admin API and prefix (kept across restarts).
struct Node {
    gw: Gateway,
    admin: SocketAddr,
    stream: u16,
}

fn node_config(pg: &PgServer, db: &str, prefix: &Path, stream: u16, admin: u16) -> GatewayConfig {
    let mut cfg = GatewayConfig::new(format!("127.0.0.1:{stream}"), "_format_version: \"3.0\"\n")
        .setting("prefix", &format!("{prefix:?}"))
        .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""))
        .setting("db_update_frequency", "1");
    for (k, v) in pg.settings(db) {
        cfg = cfg.setting(&k, &v);
    }
    cfg
}

fn start_node(pg: &PgServer, db: &str, prefix: &Path) -> Node {
    start_node_with(pg, db, prefix, &[])
}

fn start_node_with(pg: &PgServer, db: &str, prefix: &Path, extra: &[(&str, &str)]) -> Node {
    let (stream, admin) = (test_support::free_port(), test_support::free_port());
    let mut cfg = node_config(pg, db, prefix, stream, admin);
    for (k, v) in extra {
        cfg = cfg.setting(k, v);
    }
    let gw = Gateway::start(bin(), cfg);
    Node { gw, admin: format!("127.0.0.1:{admin}").parse().expect("admin address"), stream }
}

/// Creates a service and a catch-all tcp route for it on `node`.
async fn route_to(node: &Node, name: &str, backend: &Backend) {
    let r =
        send_json(node.admin, "POST", "/services", &json!({ "name": name, "url": format!("tcp://{}", backend.addr) }))
            .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = send_json(
        node.admin,
        "POST",
        &format!("/services/{name}/routes"),
        &json!({ "name": format!("{name}-route"), "protocols": ["tcp"], "sources": [{ "ip": "127.0.0.1" }] }),
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// The backend banner a new session through `port` gets, if any.
async fn banner(port: u16) -> Option<String> {
    try_banner(port).await.ok()
}

async fn try_banner(port: u16) -> Result<String, String> {
    let limit = Duration::from_secs(2);
    let mut s = match tokio::time::timeout(limit, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connect: {e}")),
        Err(_) => return Err("connect timed out".into()),
    };
    match tokio::time::timeout(limit, read_banner(&mut s)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no banner in 2 s".into()),
    }
}

/// Waits (bounded) until new sessions through `node` reach `want`; returns how long it took.
async fn serves_eventually(node: &Node, want: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        let got = try_banner(node.stream).await;
        if got.as_deref() == Ok(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < WAIT,
            "port {} never served {want} (last: {got:?}):\n{}\n{}",
            node.stream,
            node.gw.stderr(),
            node.gw.log_lines().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits (bounded) until `check` holds for `GET path` on `admin`.
async fn until(admin: SocketAddr, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let body = get(admin, path).await.json();
        if check(&body) {
            return body;
        }
        assert!(t0.elapsed() < WAIT, "{what}: {path} on {admin} is still {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_serves_on_the_other_and_concurrent_writes_all_land() {
    let Some(pg) = PgServer::start() else { return };
    let db = pg.create_database("cluster_basic");
    let (pa, pb) = (TempDir::new(), TempDir::new());
    let a = start_node(&pg, &db, pa.path());
    // B polls only every 30 s: what reaches it sooner came by notification.
    let b = start_node_with(&pg, &db, pb.path(), &[("db_update_frequency", "30")]);
    let backend = Backend::plain("redis-like").await;
    // B has polled once at start; give its listener a moment to be subscribed.
    until(b.admin, "/clustering/status", "B registered", |v| v.as_object().is_some_and(|o| o.len() == 2)).await;

    // Written on A, served by B: new sessions within a second.
    let t0 = Instant::now();
    route_to(&a, "svc", &backend).await;
    let written = t0.elapsed();
    let took = serves_eventually(&b, "redis-like").await;
    eprintln!("propagation: write took {written:?}, node B served it {took:?} after the write returned");
    assert!(took < Duration::from_secs(1), "B took {took:?}");
    assert_eq!(banner(a.stream).await.as_deref(), Some("redis-like"));

    // Changed on B right after A created it: B finds it (it catches up
    // before looking entities up), and A sees the change.
    let r = send_json(a.admin, "POST", "/services", &json!({ "name": "fresh", "url": "tcp://127.0.0.1:1" })).await;
    assert_eq!(r.status, 201);
    let r = send_json(b.admin, "PATCH", "/services/fresh", &json!({ "port": 2 })).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    until(a.admin, "/services/fresh", "the patch from B", |v| v["port"] == json!(2)).await;
    let r = send_json(
        a.admin,
        "POST",
        "/services/fresh/routes",
        &json!({ "name": "gone", "protocols": ["tcp"], "destinations": [{ "port": 9 }] }),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(send_json(b.admin, "DELETE", "/routes/gone", &Value::Null).await.status, 204);
    assert_eq!(send_json(b.admin, "DELETE", "/services/fresh", &Value::Null).await.status, 204);
    until(a.admin, "/services/fresh", "the delete from B", |v| v["message"] == json!("Not found")).await;

    // Node identity: each node names itself; both are listed, running the same configuration.
    let id_a = get(a.admin, "/").await.json()["node_id"].as_str().expect("node_id").to_owned();
    let id_b = get(b.admin, "/status").await.json()["node_id"].as_str().expect("node_id").to_owned();
    assert_ne!(id_a, id_b);
    let hash = get(a.admin, "/status").await.json()["configuration_hash"].as_str().expect("hash").to_owned();
    let listed = until(a.admin, "/clustering/status", "both nodes with one hash", |v| {
        [&id_a, &id_b].iter().all(|id| v[id.as_str()]["config_hash"] == json!(hash))
    })
    .await;
    assert!(listed[id_b.as_str()]["last_seen"].as_i64().is_some_and(|t| t > 1_700_000_000), "{listed}");
    assert_eq!(get(b.admin, "/status").await.json()["database"]["reachable"], json!(true));

    // Concurrent writes through both nodes: every one lands, nothing is lost,
    // and both nodes converge on the same configuration.
    let mut writes = Vec::new();
    for i in 0..12 {
        let admin = if i % 2 == 0 { a.admin } else { b.admin };
        writes.push(tokio::spawn(async move {
            send_json(admin, "POST", "/services", &json!({ "name": format!("c{i}"), "url": "tcp://127.0.0.1:1" })).await
        }));
    }
    for w in writes {
        let r = w.await.expect("write task");
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    for node in [&a, &b] {
        until(node.admin, "/services?size=100", "13 services", |v| v["data"].as_array().is_some_and(|d| d.len() == 13))
            .await;
    }
    let ha = get(a.admin, "/status").await.json()["configuration_hash"].clone();
    until(b.admin, "/status", "the same hash", |v| v["configuration_hash"] == ha).await;
    // A name taken on the other node is a conflict here too.
    let r = send_json(b.admin, "POST", "/services", &json!({ "name": "c0", "url": "tcp://127.0.0.1:1" })).await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_traffic_flowing_refuses_writes_and_recovers() {
    let Some(pg) = PgServer::start() else { return };
    let db = pg.create_database("cluster_outage");
    let (pa, pb) = (TempDir::new(), TempDir::new());
    let a = start_node(&pg, &db, pa.path());
    let b = start_node(&pg, &db, pb.path());
    let first = Backend::plain("first").await;
    route_to(&a, "first", &first).await;
    serves_eventually(&b, "first").await;

    pg.stop();
    // Both nodes keep proxying with the last good configuration.
    for node in [&a, &b] {
        assert_eq!(banner(node.stream).await.as_deref(), Some("first"));
        until(node.admin, "/status", "database unreachable", |v| v["database"]["reachable"] == json!(false)).await;
    }
    // Writes fail with Kong's database error, and leave nothing behind.
    let r = send_json(a.admin, "POST", "/services", &json!({ "name": "lost", "url": "tcp://127.0.0.1:1" })).await;
    assert_eq!(r.status, 500, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["code"], json!(8), "{body}");
    assert_eq!(body["name"], json!("database error"), "{body}");
    assert_eq!(get(a.admin, "/services/lost").await.status, 404);
    assert_eq!(banner(a.stream).await.as_deref(), Some("first"));

    pg.start_again();
    for node in [&a, &b] {
        until(node.admin, "/status", "database reachable again", |v| v["database"]["reachable"] == json!(true)).await;
    }
    // Writing again works, and reaches the other node.
    let second = Backend::plain("second").await;
    assert_eq!(send_json(a.admin, "DELETE", "/routes/first-route", &Value::Null).await.status, 204);
    route_to(&a, "second", &second).await;
    serves_eventually(&b, "second").await;
    assert_eq!(get(b.admin, "/services/lost").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_from_its_cache_while_the_database_is_down() {
    let Some(pg) = PgServer::start() else { return };
    let db = pg.create_database("cluster_cache");
    let prefix = TempDir::new();
    let backend = Backend::plain("cached").await;
    let node = start_node(&pg, &db, prefix.path());
    route_to(&node, "svc", &backend).await;
    let hash = get(node.admin, "/status").await.json()["configuration_hash"].clone();
    let cache = prefix.path().join("config_cache.json");
    // The cache is written in the background after each change: wait for this one.
    let t0 = Instant::now();
    while std::fs::read_to_string(&cache)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| v["hash"].clone())
        != Some(hash.clone())
    {
        assert!(t0.elapsed() < WAIT, "the cache never reached {hash}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cache).expect("cache written").permissions());
    assert_eq!(mode & 0o777, 0o600, "the cache holds private keys");
    drop(node);

    // While it is down, another node changes the configuration.
    let other_prefix = TempDir::new();
    let other = start_node(&pg, &db, other_prefix.path());
    let after = Backend::plain("after").await;
    assert_eq!(send_json(other.admin, "DELETE", "/routes/svc-route", &Value::Null).await.status, 204);
    route_to(&other, "after", &after).await;
    drop(other);

    pg.stop();
    // Restarted on the same prefix: it serves what it last saw.
    let node = start_node(&pg, &db, prefix.path());
    assert_eq!(banner(node.stream).await.as_deref(), Some("cached"));
    let status = get(node.admin, "/status").await.json();
    assert_eq!(status["database"]["reachable"], json!(false), "{status}");
    assert_eq!(status["configuration_hash"], hash);
    assert!(node.gw.stderr().contains("serving the cached configuration"), "{}", node.gw.stderr());

    // A node that never saw the database cannot start: it says why and how to fix it.
    let fresh = TempDir::new();
    let (stream, admin) = (test_support::free_port(), test_support::free_port());
    let err = start_fails(node_config(&pg, &db, fresh.path(), stream, admin)).await;
    assert!(err.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{}", pg.port)), "{err}");
    assert!(err.contains("pg_host and pg_port") && err.contains("no cached configuration"), "{err}");

    // The database returns: the cached node catches up by itself, and writes work.
    pg.start_again();
    until(node.admin, "/status", "reachable again", |v| v["database"]["reachable"] == json!(true)).await;
    serves_eventually(&node, "after").await;
    let last = Backend::plain("last").await;
    assert_eq!(send_json(node.admin, "DELETE", "/routes/after-route", &Value::Null).await.status, 204);
    route_to(&node, "last", &last).await;
    serves_eventually(&node, "last").await;
}

/// Runs `strait start` with `cfg` and returns its stderr; it must exit non-zero in time.
async fn start_fails(cfg: GatewayConfig) -> String {
    let dir = TempDir::new();
    let mut toml = format!("stream_listen = {:?}\n", cfg.stream_listen);
    for (k, v) in &cfg.settings {
        toml.push_str(&format!("{k} = {v}\n"));
    }
    let conf = dir.write("strait.toml", &toml);
    run_strait(&["start", "-c", &conf.display().to_string()], false)
}

/// Runs the binary to completion (bounded); asserts its exit status; returns stdout + stderr.
fn run_strait(args: &[&str], want_success: bool) -> String {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn strait");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("strait {args:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("strait output");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.success(), want_success, "strait {args:?}:\n{text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_from_several_processes_at_once_and_bad_settings_are_named() {
    let Some(pg) = PgServer::start() else { return };
    let db = pg.create_database("cluster_migrations");
    let dir = TempDir::new();
    let settings = |db: &str, extra: &str| {
        let mut t = format!("prefix = {:?}\nauto_migrate = false\n", dir.path().join("p"));
        for (k, v) in pg.settings(db) {
            t.push_str(&format!("{k} = {v}\n"));
        }
        t + extra
    };
    let conf = dir.write("strait.toml", &settings(&db, "")).display().to_string();

    // Not migrated and auto_migrate off: start refuses and names the fix.
    let err = run_strait(&["start", "-c", &conf], false);
    assert!(err.contains("pending migration") && err.contains("strait migrations up"), "{err}");

    // Four processes migrate at once: all succeed, each step applied once.
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let conf = conf.clone();
            std::thread::spawn(move || run_strait(&["migrations", "up", "-c", &conf], true))
        })
        .collect();
    let outs: Vec<String> = runs.into_iter().map(|t| t.join().expect("migration thread")).collect();
    let applied = outs.iter().filter(|o| o.contains("migrated: 001_entities")).count();
    assert_eq!(applied, 1, "{outs:#?}");
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM strait_migrations"), "2");
    let status = run_strait(&["migrations", "status", "-c", &conf], true);
    assert!(status.contains("001_entities") && !status.contains("pending"), "{status}");
    assert!(run_strait(&["migrations", "bootstrap", "-c", &conf], true).contains("already bootstrapped"));

    // A schema newer than this binary: start refuses.
    pg.sql(&db, "INSERT INTO strait_migrations (version, name, applied_at) VALUES (99, 'future', 0)");
    let err = run_strait(&["start", "-c", &conf], false);
    assert!(err.contains("newer than this binary knows"), "{err}");

    // Wrong password, unknown database: named.
    let wrong = dir.write("wrong.toml", &settings(&db, "").replace(test_support::pg::PASSWORD, "nope"));
    let err = run_strait(&["start", "-c", &wrong.display().to_string()], false);
    assert!(err.contains("refused user 'postgres'") && err.contains("pg_password"), "{err}");
    let missing = dir.write("missing.toml", &settings("no_such_db", ""));
    let err = run_strait(&["start", "-c", &missing.display().to_string()], false);
    assert!(err.contains("no database 'no_such_db'") && err.contains("pg_database"), "{err}");
}
