//! The Admin API against a started gateway: Kong's endpoints, conventions and
//! errors, live apply without disturbing open sessions, persistence.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use test_support::WAIT;
use test_support::backend::{Backend, read_banner};
use test_support::gateway::{Gateway, GatewayConfig, TempDir};
use test_support::http::{get, request, send_form, send_json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

/// A gateway with the embedded store under `prefix` and the Admin API on a free port.
fn start(prefix: &Path, stream_port: u16) -> (Gateway, SocketAddr) {
    start_with(prefix, stream_port, |c| c)
}

fn start_with(
    prefix: &Path,
    stream_port: u16,
    more: impl FnOnce(GatewayConfig) -> GatewayConfig,
) -> (Gateway, SocketAddr) {
    let admin_port = test_support::free_port();
    let gw = Gateway::start(
        bin(),
        more(
            GatewayConfig::new(format!("127.0.0.1:{stream_port}"), "_format_version: \"3.0\"\n")
                .setting("database", "\"sqlite\"")
                .setting("prefix", &format!("{prefix:?}"))
                .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\"")),
        ),
    );
    (gw, format!("127.0.0.1:{admin_port}").parse().expect("admin address"))
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back)).await.expect("echo in time").expect("read echo");
    assert_eq!(back, msg);
}

/// Every service's name, walking `/services` pages of `size` through `next`.
async fn service_names_by_pages(admin: SocketAddr, size: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut path = format!("/services?size={size}");
    for _ in 0..100 {
        let page = get(admin, &path).await.json();
        let data = page["data"].as_array().expect("a data list");
        assert!(data.len() <= size);
        names.extend(data.iter().map(|s| s["name"].as_str().unwrap_or_default().to_owned()));
        match page["next"].as_str() {
            Some(next) => path = next.to_owned(),
            None => return names,
        }
    }
    panic!("more than 100 pages")
}

/// Connects through the gateway until the wanted backend answers (bounded):
/// changes apply within a fraction of a second, not necessarily at once.
async fn banner_eventually(port: u16, want: &str) -> TcpStream {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await
            && let Ok(b) = read_banner(&mut s).await
            && b == want
        {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_recipe_then_live_change_keeps_open_sessions() {
    let a = Backend::plain("backend-a").await;
    let b = Backend::plain("backend-b").await;
    let prefix = TempDir::new();
    let port = test_support::free_port();
    let (_gw, admin) = start(prefix.path(), port);

    // As in Kong's docs: form-encoded bodies.
    let r = send_form(admin, "POST", "/services", &format!("name=echo&url=tcp://{}", a.addr)).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["protocol"], "tcp");
    assert_eq!(r.json()["retries"], 5);
    let r =
        send_form(admin, "POST", "/services/echo/routes", &format!("name=r&protocols=tcp&destinations[1].port={port}"))
            .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["service"]["id"], get(admin, "/services/echo").await.json()["id"]);

    // Served at once, and a long-lived session starts.
    let mut old = banner_eventually(port, "backend-a").await;
    echo(&mut old, b"before").await;

    // Re-point the service: new sessions go to b, the open one stays on a.
    let r = send_json(admin, "PATCH", "/services/echo", &json!({"url": format!("tcp://{}", b.addr)})).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    assert_eq!(r.json()["port"], b.addr.port());
    let _new = banner_eventually(port, "backend-b").await;
    echo(&mut old, b"after the change").await;

    // A change that cannot be valid is refused and changes nothing.
    let r = send_json(admin, "PATCH", "/routes/r", &json!({"destinations": [{"port": 70000}]})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], 2);
    assert_eq!(r.json()["fields"]["destinations"][0]["port"], "value should be between 0 and 65535");
    assert_eq!(get(admin, "/routes/r").await.json()["destinations"][0]["port"], port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_error_codes() {
    let prefix = TempDir::new();
    let (_gw, admin) = start(prefix.path(), test_support::free_port());
    let svc = json!({"name": "s1", "url": "tcp://127.0.0.1:1"});
    assert_eq!(send_json(admin, "POST", "/services", &svc).await.status, 201);

    // Schema violation: every bad field named.
    let r =
        send_json(admin, "POST", "/services", &json!({"name": "bad name", "protocol": "ftp", "host": "x", "port": -1}))
            .await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!((e["code"].clone(), e["name"].clone()), (json!(2), json!("schema violation")));
    assert!(e["fields"]["protocol"].as_str().unwrap().starts_with("expected one of"));
    assert_eq!(e["fields"]["port"], "value should be between 0 and 65535");
    assert!(e["fields"]["name"].is_string());
    // Route rules, at entity level.
    let r = send_json(admin, "POST", "/routes", &json!({"protocols": ["tcp"], "service": {"name": "s1"}})).await;
    assert_eq!(
        r.json()["fields"]["@entity"][0],
        "must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp'"
    );
    // Unique violation.
    let r = send_json(admin, "POST", "/services", &svc).await;
    assert_eq!((r.status, r.json()["code"].clone()), (409, json!(5)));
    // Not found.
    assert_eq!(get(admin, "/services/nope").await.status, 404);
    assert_eq!(get(admin, "/services/nope").await.json(), json!({"message": "Not found"}));
    assert_eq!(get(admin, "/nothing-here").await.status, 404);
    // Foreign key.
    let r = send_json(
        admin,
        "POST",
        "/routes",
        &json!({"protocols": ["tcp"], "sources": [{"ip": "10.0.0.0/8"}], "service": {"id": "0a0b0c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d"}}),
    )
    .await;
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!(4)), "{:?}", r.json());
    // Invalid size and offset.
    assert_eq!(get(admin, "/services?size=0").await.json()["code"], 9);
    assert_eq!(get(admin, "/services?size=1001").await.status, 400);
    assert_eq!(get(admin, "/services?offset=zz!").await.json()["code"], 7);
    // Referenced by others.
    let r =
        send_json(admin, "POST", "/services/s1/routes", &json!({"protocols": ["tcp"], "destinations": [{"port": 1}]}))
            .await;
    assert_eq!(r.status, 201);
    let r = request(admin, "DELETE", "/services/s1", None, &[]).await;
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!(19)));
    // Malformed bodies, methods, disabled endpoints.
    let r = request(admin, "POST", "/services", Some(("application/json", b"{not json")), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(request(admin, "PATCH", "/services", None, &[]).await.status, 405);
    // Kong's disabled endpoints answer as if absent.
    assert_eq!(get(admin, "/targets").await.status, 404);
    assert_eq!(get(admin, "/snis/x/certificate").await.status, 404);
    // Tags cannot mix AND and OR.
    assert_eq!(get(admin, "/services?tags=a,b/c").await.status, 400);
    // Invalid UUID as id.
    let r = send_json(admin, "POST", "/services", &json!({"id": "not-a-uuid", "url": "tcp://h:1"})).await;
    assert_eq!((r.status, r.json()["fields"]["id"].clone()), (400, json!("expected a valid UUID")));
    // An id already taken: primary key violation.
    let taken = get(admin, "/services/s1").await.json()["id"].clone();
    let r = send_json(admin, "POST", "/services", &json!({"id": taken, "url": "tcp://h:1"})).await;
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!(3)), "{:?}", r.json());
    // A path that names a CA certificate by something other than an id.
    let r = send_json(admin, "PUT", "/ca_certificates/not-an-id", &json!({"cert": "x"})).await;
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!(1)));
    // Oversized bodies are refused before parsing.
    let huge = vec![b' '; strait_admin_max_body() + 1];
    let r = request(admin, "POST", "/services", Some(("application/json", &huge)), &[]).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["message"], "Request body too large");
    // Deleting what is gone is still 204, as Kong.
    assert_eq!(request(admin, "DELETE", "/upstreams/none", None, &[]).await.status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_tags_put_and_nested_endpoints() {
    let prefix = TempDir::new();
    let (_gw, admin) = start(prefix.path(), test_support::free_port());
    for i in 0..5 {
        let tags = if i % 2 == 0 { json!(["even", "all"]) } else { json!(["odd", "all"]) };
        let r = send_json(
            admin,
            "POST",
            "/services",
            &json!({"name": format!("s{i}"), "url": "tcp://127.0.0.1:1", "tags": tags}),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    // Pages of two, following `next`.
    let names = service_names_by_pages(admin, 2).await;
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
    // Tags: `,` is AND, `/` is OR.
    let count = |v: Value| v["data"].as_array().map_or(0, Vec::len);
    assert_eq!(count(get(admin, "/services?tags=even").await.json()), 3);
    assert_eq!(count(get(admin, "/services?tags=even,all").await.json()), 3);
    assert_eq!(count(get(admin, "/services?tags=even,odd").await.json()), 0);
    assert_eq!(count(get(admin, "/services?tags=even/odd").await.json()), 5);

    // PUT upserts by name: 200 both times, same id.
    let put = json!({"url": "tcp://127.0.0.1:2"});
    let first = send_json(admin, "PUT", "/services/by-put", &put).await;
    assert_eq!(first.status, 200, "{:?}", first.json());
    let second = send_json(admin, "PUT", "/services/by-put", &json!({"url": "tcp://127.0.0.1:3"})).await;
    assert_eq!(second.status, 200);
    assert_eq!(first.json()["id"], second.json()["id"]);
    assert_eq!(second.json()["port"], 3);
    assert_eq!(second.json()["name"], "by-put", "PUT by name keeps the name");
    // A nested path that names no child of that parent: 404, even for DELETE.
    assert_eq!(request(admin, "DELETE", "/services/by-put/routes/nope", None, &[]).await.status, 404);

    // Upstreams and their targets; the disabled /targets stays disabled.
    assert_eq!(send_json(admin, "POST", "/upstreams", &json!({"name": "pool"})).await.status, 201);
    let t = send_json(admin, "POST", "/upstreams/pool/targets", &json!({"target": "127.0.0.1:9000"})).await;
    assert_eq!(t.status, 201, "{:?}", t.json());
    assert_eq!(t.json()["weight"], 100);
    assert_eq!(count(get(admin, "/upstreams/pool/targets").await.json()), 1);
    assert_eq!(count(get(admin, "/upstreams/pool/targets/all").await.json()), 1);
    assert_eq!(get(admin, "/upstreams/pool/targets/127.0.0.1:9000").await.status, 200);
    // Deleting the upstream takes its targets along.
    assert_eq!(request(admin, "DELETE", "/upstreams/pool", None, &[]).await.status, 204);
    assert_eq!(get(admin, "/upstreams/pool").await.status, 404);

    // Plugins nested under a service; /routes/{r}/service.
    let p = send_json(
        admin,
        "POST",
        "/services/s0/plugins",
        &json!({"name": "ip-restriction", "config": {"allow": ["10.0.0.0/8"]}}),
    )
    .await;
    assert_eq!(p.status, 201, "{:?}", p.json());
    assert_eq!(count(get(admin, "/services/s0/plugins").await.json()), 1);
    let r = send_json(
        admin,
        "POST",
        "/services/s0/routes",
        &json!({"name": "rr", "protocols": ["tcp"], "sources": [{"ip": "10.0.0.0/8"}]}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(get(admin, "/routes/rr/service").await.json()["name"], "s0");
    // A nested PUT moves a route to that service, as Kong upserts.
    let moved = send_json(
        admin,
        "PUT",
        "/services/s1/routes/rr",
        &json!({"protocols": ["tcp"], "sources": [{"ip": "10.0.0.0/8"}]}),
    )
    .await;
    assert_eq!(moved.status, 200, "{:?}", moved.json());
    assert_eq!(get(admin, "/routes/rr/service").await.json()["name"], "s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_a_restart_and_config_round_trips() {
    let backend = Backend::plain("kept").await;
    let prefix = TempDir::new();
    let port = test_support::free_port();
    let hash;
    {
        let (mut gw, admin) = start(prefix.path(), port);
        let r = send_json(
            admin,
            "POST",
            "/services",
            &json!({"name": "kept", "url": format!("tcp://{}", backend.addr), "routes": []}),
        )
        .await;
        // `routes` is not a service field in the Admin API.
        assert_eq!(r.status, 400);
        assert_eq!(
            send_json(admin, "POST", "/services", &json!({"name": "kept", "url": format!("tcp://{}", backend.addr)}))
                .await
                .status,
            201
        );
        let r = send_json(
            admin,
            "POST",
            "/services/kept/routes",
            &json!({"protocols": ["tcp"], "destinations": [{"port": port}]}),
        )
        .await;
        assert_eq!(r.status, 201);
        hash = get(admin, "/status").await.json()["configuration_hash"].clone();
        assert_eq!(get(admin, "/status").await.json()["database"]["reachable"], true);
        gw.terminate();
        assert!(gw.wait_exit(WAIT).await.success());
    }
    let (_gw, admin) = start(prefix.path(), port);
    assert_eq!(get(admin, "/services/kept").await.status, 200);
    assert_eq!(get(admin, "/status").await.json()["configuration_hash"], hash);
    let _s = banner_eventually(port, "kept").await;

    // Export, then import into a DB-less gateway: the same configuration hash.
    let exported = get(admin, "/config").await.json()["config"].as_str().unwrap().to_owned();
    let off = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{}", test_support::free_port()), "_format_version: \"3.0\"\n")
            .setting("admin_listen", &format!("\"127.0.0.1:{}\"", test_support::free_port())),
    );
    let off_admin: SocketAddr = off
        .stderr()
        .split("admin=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("admin address in the start line");
    // DB-less: entity writes are refused, /config is the way.
    assert_eq!(send_json(off_admin, "POST", "/services", &json!({"url": "tcp://h:1"})).await.status, 405);
    let r = request(off_admin, "POST", "/config", Some(("application/json", exported.as_bytes())), &[]).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(get(off_admin, "/status").await.json()["configuration_hash"], hash);
    let r =
        request(off_admin, "POST", "/config?check_hash=1", Some(("application/json", exported.as_bytes())), &[]).await;
    assert_eq!(r.status, 304);
    // A bad document is refused, with flattened errors on request.
    let bad = b"_format_version: \"3.0\"\nroutes:\n- protocols: [tcp]\n";
    let r = request(off_admin, "POST", "/config?flatten_errors=1", Some(("application/yaml", bad)), &[]).await;
    assert_eq!((r.status, r.json()["code"].clone()), (400, json!(14)));
    assert_eq!(r.json()["flattened_errors"][0]["entity_type"], "route");
    assert_eq!(get(off_admin, "/status").await.json()["configuration_hash"], hash, "nothing changed");
    // A file without timestamps, posted twice: the second is a no-op (304).
    let plain = b"_format_version: \"3.0\"\nservices:\n- name: x\n  url: tcp://127.0.0.1:7\n";
    let r = request(off_admin, "POST", "/config?check_hash=1", Some(("application/yaml", plain)), &[]).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let r = request(off_admin, "POST", "/config?check_hash=1", Some(("application/yaml", plain)), &[]).await;
    assert_eq!(r.status, 304);
    // The document as a JSON object under "config", as JSON clients send it.
    let wrapped =
        json!({"config": {"_format_version": "3.0", "services": [{"name": "y", "url": "tcp://127.0.0.1:8"}]}});
    let r = send_json(off_admin, "POST", "/config", &wrapped).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(get(off_admin, "/services/y").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_token_is_required_when_set() {
    let prefix = TempDir::new();
    let admin_port = test_support::free_port();
    let _gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{}", test_support::free_port()), "_format_version: \"3.0\"\n")
            .setting("database", "\"sqlite\"")
            .setting("prefix", &format!("{:?}", prefix.path()))
            .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\""))
            .setting("admin_token", "\"s3cret\""),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert_eq!(get(admin, "/services").await.status, 401);
    let r = request(admin, "GET", "/services", None, &[("Kong-Admin-Token", "s3cret")]).await;
    assert_eq!(r.status, 200);
    let root = request(admin, "GET", "/", None, &[("Kong-Admin-Token", "s3cret")]).await.json();
    assert!(root["node_id"].is_string());
    assert_eq!(root["configuration"]["database"], "sqlite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_through_the_api_terminate_tls_and_writes_never_lose_each_other() {
    use test_support::backend::tls_connect;
    use test_support::certs::{TestCa, client_config};
    let ca = TestCa::new("api CA");
    let leaf = ca.leaf(&["api.test"]);
    let backend = Backend::plain("behind-tls").await;
    let prefix = TempDir::new();
    let port = test_support::free_port();
    let admin_port = test_support::free_port();
    let _gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port} ssl"), "_format_version: \"3.0\"\n")
            .setting("database", "\"sqlite\"")
            .setting("prefix", &format!("{:?}", prefix.path()))
            .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\"")),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();

    // A key that does not match its certificate: Kong's message, no key echoed.
    let other = ca.leaf(&["other.test"]);
    let r = send_json(admin, "POST", "/certificates", &json!({"cert": leaf.cert, "key": other.key})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["fields"]["@entity"][0], "certificate does not match key");
    assert!(!String::from_utf8_lossy(&r.body).contains("PRIVATE KEY"));

    let r =
        send_json(admin, "POST", "/certificates", &json!({"cert": leaf.cert, "key": leaf.key, "snis": ["api.test"]}))
            .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    assert_eq!(r.json()["snis"], json!(["api.test"]));
    assert_eq!(get(admin, "/certificates/api.test").await.status, 200, "a certificate is addressable by its SNI");
    assert_eq!(get(admin, "/snis/api.test").await.json()["certificate"]["id"], r.json()["id"]);
    let s =
        send_json(admin, "POST", "/services", &json!({"name": "t", "url": format!("tcp://{}", backend.addr)})).await;
    assert_eq!(s.status, 201);
    let rt = send_json(admin, "POST", "/services/t/routes", &json!({"protocols": ["tls"], "snis": ["api.test"]})).await;
    assert_eq!(rt.status, 201, "{:?}", rt.json());
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut tls = loop {
        if let Ok(s) = tls_connect(to, "api.test", client_config(&ca)).await {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the certificate never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(read_banner(&mut tls).await.unwrap(), "behind-tls");

    // Twenty concurrent writes: all of them land.
    let writes = (0..20).map(|i| {
        tokio::spawn(async move {
            send_json(admin, "POST", "/services", &json!({"name": format!("c{i}"), "url": "tcp://127.0.0.1:1"}))
                .await
                .status
        })
    });
    for w in writes {
        assert_eq!(w.await.unwrap(), 201);
    }
    let all = get(admin, "/services?size=1000").await.json();
    assert_eq!(all["data"].as_array().map(Vec::len), Some(21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_answers_every_openapi_route_and_nothing_else() {
    use test_support::certs::TestCa;
    let prefix = TempDir::new();
    // With Wasm on and one filter, so the filter endpoints answer too.
    let filters = TempDir::new();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/wasm/out/passthrough.wasm"),
        filters.path().join("passthrough.wasm"),
    )
    .unwrap();
    let stream_port = test_support::free_port();
    let (_gw, admin) = start_with(prefix.path(), stream_port, |c| {
        c.setting("wasm", "\"on\"").setting("wasm_filters_path", &format!("{:?}", filters.path()))
    });
    let ca = TestCa::new("coverage CA");
    let leaf = ca.leaf(&["api.test"]);
    let post = |path: &'static str, body: Value| async move {
        let r = send_json(admin, "POST", path, &body).await;
        assert_eq!(r.status, 201, "{path}: {:?}", r.json());
        r.json()["id"].as_str().unwrap().to_owned()
    };
    let cert = post("/certificates", json!({"cert": leaf.cert, "key": leaf.key, "snis": ["api.test"]})).await;
    let ca_id = post("/ca_certificates", json!({"cert": ca.pem.cert})).await;
    post("/services", json!({"name": "svc", "url": "tls://127.0.0.1:1", "client_certificate": {"id": cert}})).await;
    post("/services/svc/routes", json!({"name": "rt", "protocols": ["tcp"], "destinations": [{"port": 1}]})).await;
    let svc_plugin =
        post("/services/svc/plugins", json!({"name": "file-log", "config": {"path": "/tmp/strait-admin-test.log"}}))
            .await;
    let route_plugin =
        post("/routes/rt/plugins", json!({"name": "tcp-log", "config": {"host": "127.0.0.1", "port": 9}})).await;
    // A chain on the route and one on the service, and a spare route and
    // service to move them to while a throwaway takes their place.
    let rt_spare =
        post("/services/svc/routes", json!({"name": "rt-spare", "protocols": ["tcp"], "destinations": [{"port": 3}]}))
            .await;
    let svc_spare = post("/services", json!({"name": "svc-spare", "url": "tcp://127.0.0.1:1"})).await;
    let route_chain = post("/routes/rt/filter-chains", json!({"filters": [{"name": "passthrough"}]})).await;
    let svc_chain = post("/services/svc/filter-chains", json!({"filters": [{"name": "passthrough"}]})).await;
    post("/upstreams", json!({"name": "up", "targets": null})).await;
    post("/upstreams/up/targets", json!({"target": "127.0.0.1:9000"})).await;
    // A live session, for the sessions endpoints.
    let backend = Backend::plain("b").await;
    post("/services", json!({"name": "live", "url": format!("tcp://{}", backend.addr)})).await;
    post("/services/live/routes", json!({"protocols": ["tcp"], "destinations": [{"port": stream_port}]})).await;
    let open_session = || async move {
        let mut s = TcpStream::connect(("127.0.0.1", stream_port)).await.expect("connect");
        read_banner(&mut s).await.expect("banner");
        let port = s.local_addr().expect("local").port();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let list = get(admin, "/sessions").await.json();
            let found = list["data"].as_array().and_then(|d| d.iter().find(|x| x["client"]["port"] == port).cloned());
            if let Some(found) = found {
                return (s, found["id"].to_string());
            }
            assert!(tokio::time::Instant::now() < deadline, "session not listed: {list}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (_kept, session) = open_session().await;

    // The document the server serves is the committed one.
    let served = get(admin, "/openapi.json").await.json();
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(served, committed);

    let paths = served["paths"].as_object().unwrap();
    for (template, ops) in paths {
        let plugin = if template.starts_with("/routes") { &route_plugin } else { &svc_plugin };
        let chain =
            if template.starts_with("/services") || template.ends_with("/service") { &svc_chain } else { &route_chain };
        let path = template
            .replace("{service}", "svc")
            .replace("{route}", "rt")
            .replace("{plugin}", plugin)
            .replace("{certificate}", &cert)
            .replace("{sni}", "api.test")
            .replace("{ca_certificate}", &ca_id)
            .replace("{upstream}", "up")
            .replace("{target}", "127.0.0.1:9000")
            .replace("{address}", "127.0.0.1:9000")
            .replace("{entity}", "services")
            .replace("{plugin_name}", "ip-restriction")
            .replace("{filter_chain}", chain)
            .replace("{filter_name}", "passthrough")
            .replace("{session}", &session);
        let path = if template == "/router/match" {
            format!("{path}?protocol=tcp&source=127.0.0.1:1&destination=127.0.0.1:{stream_port}")
        } else {
            path
        };
        for method in ops.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            let r = match method.as_str() {
                // A stream: its head is the answer.
                "GET" if template == "/sessions/events" => {
                    let mut s = TcpStream::connect(admin).await.expect("admin");
                    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes()).await.expect("ask");
                    let mut head = [0u8; 12];
                    tokio::time::timeout(WAIT, s.read_exact(&mut head)).await.expect("in time").expect("head");
                    assert_eq!(&head, b"HTTP/1.1 200", "GET {path}");
                    continue;
                }
                "GET" => get(admin, &path).await,
                // Closes nothing: the session stays for the GETs.
                "DELETE" if template == "/sessions" => {
                    request(admin, "DELETE", "/sessions?all=true&dry_run=true", None, &[]).await
                }
                // A session of its own.
                "DELETE" if template == "/sessions/{session}" => {
                    let (_s, id) = open_session().await;
                    request(admin, "DELETE", &format!("/sessions/{id}"), None, &[]).await
                }
                "DELETE" if template.ends_with("/drain") => request(admin, "DELETE", &path, None, &[]).await,
                // Delete a throwaway created in the same collection, so what
                // later checks need stays.
                "DELETE" => {
                    let collection = path.rsplit_once('/').map(|(c, _)| c.to_owned()).unwrap();
                    let kind = collection.rsplit('/').next().unwrap().to_owned();
                    let extra = ca.leaf(&["gone.test"]);
                    let body = match kind.as_str() {
                        "services" => json!({"url": "tcp://127.0.0.1:1"}),
                        "routes" => json!({"protocols": ["tcp"], "destinations": [{"port": 2}]}),
                        "plugins" => json!({"name": "udp-log", "config": {"host": "127.0.0.1", "port": 9}}),
                        "certificates" => json!({"cert": extra.cert, "key": extra.key}),
                        "snis" if collection == "/snis" => json!({"name": "gone.test", "certificate": {"id": cert}}),
                        "snis" => json!({"name": "gone.test"}),
                        "ca_certificates" => json!({"cert": ca.pem.cert}),
                        "upstreams" => json!({"name": "gone-up"}),
                        "targets" => json!({"target": "127.0.0.1:9999"}),
                        // One chain per route or service: the throwaway goes on
                        // the spare route, or in place of the chain moved there.
                        "filter-chains" if collection == "/filter-chains" => {
                            json!({"route": {"id": rt_spare}, "filters": [{"name": "passthrough"}]})
                        }
                        "filter-chains" => {
                            let (moved, to) = if collection.starts_with("/services") {
                                (&svc_chain, json!({"service": {"id": svc_spare}}))
                            } else {
                                (&route_chain, json!({"route": {"id": rt_spare}}))
                            };
                            let r = send_json(admin, "PATCH", &format!("/filter-chains/{moved}"), &to).await;
                            assert_eq!(r.status, 200, "moving {moved}: {:?}", r.json());
                            json!({"filters": [{"name": "passthrough"}]})
                        }
                        other => panic!("no throwaway for {other}"),
                    };
                    let made = send_json(admin, "POST", &collection, &body).await;
                    assert_eq!(made.status, 201, "POST {collection}: {:?}", made.json());
                    let id = made.json()["id"].as_str().unwrap().to_owned();
                    let r = request(admin, "DELETE", &format!("{collection}/{id}"), None, &[]).await;
                    assert_eq!(r.status, 204, "DELETE {collection}/{id}");
                    if kind == "filter-chains" && collection != "/filter-chains" {
                        let (moved, back) = if collection.starts_with("/services") {
                            (&svc_chain, json!({"service": {"name": "svc"}}))
                        } else {
                            (&route_chain, json!({"route": {"name": "rt"}}))
                        };
                        let b = send_json(admin, "PATCH", &format!("/filter-chains/{moved}"), &back).await;
                        assert_eq!(b.status, 200, "moving {moved} back: {:?}", b.json());
                    }
                    r
                }
                // `/config` and `/schemas/../validate` reject `{}`: still answered.
                _ => send_json(admin, &method, &path, &json!({})).await,
            };
            assert!(r.status != 404 && r.status != 405, "{method} {path}: {} {:?}", r.status, r.json());
            if method == "GET" {
                assert_eq!(r.status, 200, "GET {path}: {:?}", r.json());
            }
        }
    }
    // And nothing beyond the document.
    for probe in
        ["/consumers", "/services/svc/unknown", "/certificates/x/snis/y/z", "/status/more", "/schemas/consumers"]
    {
        assert_eq!(get(admin, probe).await.status, 404, "{probe}");
    }
    for (method, probe) in [("DELETE", "/services"), ("POST", "/status"), ("PUT", "/config")] {
        assert_eq!(request(admin, method, probe, None, &[]).await.status, 405, "{method} {probe}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_over_https() {
    use test_support::backend::tls_connect;
    use test_support::certs::insecure_client_config;
    let prefix = TempDir::new();
    let admin_port = test_support::free_port();
    let _gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{}", test_support::free_port()), "_format_version: \"3.0\"\n")
            .setting("database", "\"sqlite\"")
            .setting("prefix", &format!("{:?}", prefix.path()))
            .setting("admin_listen", &format!("\"127.0.0.1:{admin_port} ssl\"")),
    );
    let to = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let mut s = tls_connect(to, "localhost", insecure_client_config()).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("configuration_hash"), "{text}");
    // Plain HTTP on the HTTPS port gets nothing useful.
    let r = tokio::time::timeout(WAIT, async {
        let mut p = TcpStream::connect(to).await.unwrap();
        p.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = p.read_to_end(&mut buf).await;
        buf
    })
    .await
    .unwrap();
    assert!(!String::from_utf8_lossy(&r).contains("configuration_hash"));
}

/// `strait_admin::MAX_BODY`, without depending on the crate from this test.
fn strait_admin_max_body() -> usize {
    16 * 1024 * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dbless_lists_paginate() {
    let services: Vec<String> =
        (0..5).map(|i| format!("- name: s{i}\n  url: tcp://127.0.0.1:{}\n", 1000 + i)).collect();
    let yaml = format!("_format_version: \"3.0\"\nservices:\n{}", services.concat());
    let admin_port = test_support::free_port();
    let _gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{}", test_support::free_port()), yaml)
            .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\"")),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let names = service_names_by_pages(admin, 2).await;
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);
}

/// Runs the real `curl`, as users paste Kong's recipes.
fn curl(args: &[&str]) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "15", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kong_curl_recipes_with_real_curl() {
    use test_support::certs::TestCa;
    let prefix = TempDir::new();
    let (_gw, admin) = start(prefix.path(), test_support::free_port());
    let base = format!("http://{admin}");
    let ca = TestCa::new("curl CA");
    let leaf = ca.leaf(&["curl.test"]);
    let files = TempDir::new();
    let cert = files.write("cert.pem", &leaf.cert);
    let key = files.write("key.pem", &leaf.key);

    let (code, body) = curl(&[
        "-X",
        "POST",
        &format!("{base}/services"),
        "--data",
        "name=example",
        "--data",
        "url=tcp://127.0.0.1:6379",
    ]);
    assert_eq!(code, 201, "{body}");
    let (code, body) = curl(&[
        "-X",
        "POST",
        &format!("{base}/services/example/routes"),
        "--data",
        "protocols[]=tls",
        "--data",
        "snis[]=curl.test",
    ]);
    assert_eq!(code, 201, "{body}");
    // Multipart, as Kong's certificate docs do it.
    let (code, body) = curl(&[
        "-X",
        "POST",
        &format!("{base}/certificates"),
        "-F",
        &format!("cert=@{}", cert.display()),
        "-F",
        &format!("key=@{}", key.display()),
        "-F",
        "snis[]=curl.test",
    ]);
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["snis"], json!(["curl.test"]));
    let (code, body) = curl(&["-X", "PATCH", &format!("{base}/services/example"), "--data", "retries=2"]);
    assert_eq!((code, body["retries"].clone()), (200, json!(2)));
    let (code, _) = curl(&["-X", "DELETE", &format!("{base}/certificates/curl.test")]);
    assert_eq!(code, 204);
}
