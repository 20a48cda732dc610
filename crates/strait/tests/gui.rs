//! The web UI (`admin_gui_listen`) in a real headless Chromium against the
//! real binary: entities created through its forms carry a session that
//! its Sessions page lists and kills; the Admin API's field errors appear
//! by their field; the overview moves with traffic; the route tester
//! answers; the token prompt; every page without a console error, at two
//! window widths, with a screenshot of each (target/tmp/gui-screenshots).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{addr, bin};
use serde_json::{Value, json};
use test_support::WAIT;
use test_support::backend::{Backend, read_banner};
use test_support::gateway::{Gateway, GatewayConfig};
use test_support::http::{get, request, send_json};
use test_support::webdriver::Browser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Ui {
    gw: Gateway,
    admin: SocketAddr,
    gui: String,
    stream: u16,
}

/// A gateway on its embedded database with the Admin API and the UI.
fn start(extra: &[(&str, &str)]) -> Ui {
    let (stream, admin, gui) = (test_support::free_port(), test_support::free_port(), test_support::free_port());
    let prefix = test_support::gateway::TempDir::new();
    let mut cfg = GatewayConfig::new(format!("127.0.0.1:{stream}"), "_format_version: \"3.0\"\n")
        .setting("database", "\"sqlite\"")
        .setting("prefix", &format!("{:?}", prefix.path()))
        .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""))
        .setting("admin_gui_listen", &format!("\"127.0.0.1:{gui}\""));
    for (k, v) in extra {
        cfg = cfg.setting(k, v);
    }
    let gw = Gateway::start(bin(), cfg);
    // The prefix lives as long as the gateway's own folder.
    std::mem::forget(prefix);
    Ui { gw, admin: addr(admin), gui: format!("http://127.0.0.1:{gui}"), stream }
}

/// No console entry at level SEVERE (errors) since the last look.
async fn no_console_errors(b: &Browser, page: &str) {
    no_console_errors_but(b, page, None).await;
}

/// As [`no_console_errors`], but the browser's own report of one refused
/// Admin API call — `(path, status)`, the answer the test provoked — is
/// expected.
async fn no_console_errors_but(b: &Browser, page: &str, refused: Option<(&str, u16)>) {
    let expected =
        |m: &str| refused.is_some_and(|(path, status)| m.contains(path) && m.contains(&format!("status of {status}")));
    let errors: Vec<_> = b.console().await.into_iter().filter(|(level, m)| level == "SEVERE" && !expected(m)).collect();
    assert!(errors.is_empty(), "console errors on {page}: {errors:?}");
}

/// The form field labelled `label` in the entity form.
async fn form_field(b: &Browser, label: &str) -> test_support::webdriver::Element {
    b.field("form.entity-form", label).await
}

/// The id of the entity form's control labelled `label`.
async fn key_id(b: &Browser, label: &str) -> String {
    let v = b
        .run(
            "return [...document.querySelectorAll('form.entity-form label')].find(l => l.textContent.trim() === arguments[0])?.htmlFor",
            json!([label]),
        )
        .await;
    v.as_str().expect("a labelled control").to_owned()
}

/// Waits until a row of the list holds `text`.
async fn row_with(b: &Browser, text: &str) {
    b.until(
        &format!("a row with {text:?}"),
        "return [...document.querySelectorAll('main tbody tr')].some(r => r.textContent.includes(arguments[0]))",
        json!([text]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_and_route_made_in_the_forms_carry_a_session_the_sessions_page_kills() {
    let ui = start(&[]);
    let backend = Backend::plain("ui-backend").await;
    let b = Browser::start(1280, 900).await;

    // A service through its form.
    b.goto(&format!("{}/#/services", ui.gui)).await;
    b.click(&b.button("New service").await).await;
    b.fill(&form_field(&b, "name").await, "web").await;
    b.fill(&form_field(&b, "url").await, &format!("tcp://{}", backend.addr)).await;
    let hint = b.text(&b.css("form.entity-form details.curl").await).await;
    assert!(hint.contains("curl"), "the form shows its curl hint: {hint}");
    b.click(&b.button("Create service").await).await;
    row_with(&b, "web").await;
    let services = get(ui.admin, "/services/web").await;
    assert_eq!(services.status, 200, "the form created the service");
    assert_eq!(services.json()["port"], backend.addr.port());

    // A route to it through its form.
    b.goto(&format!("{}/#/routes", ui.gui)).await;
    b.click(&b.button("New route").await).await;
    b.fill(&form_field(&b, "name").await, "web-route").await;
    b.fill(&form_field(&b, "destinations").await, &ui.stream.to_string()).await;
    b.select(&form_field(&b, "service").await, "web").await;
    b.click(&b.button("Create route").await).await;
    row_with(&b, "web-route").await;
    let route = get(ui.admin, "/routes/web-route").await.json();
    assert_eq!(route["protocols"], json!(["tcp"]));
    assert_eq!(route["destinations"][0]["port"], ui.stream);

    // A session through them, on the Sessions page.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut client = loop {
        let mut s = TcpStream::connect(addr(ui.stream)).await.expect("connect");
        if let Ok(banner) = read_banner(&mut s).await {
            assert_eq!(banner, "ui-backend");
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "the route never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let port = client.local_addr().expect("local").port().to_string();
    b.goto(&format!("{}/#/sessions", ui.gui)).await;
    row_with(&b, &format!("127.0.0.1:{port}")).await;
    let id = get(ui.admin, "/sessions").await.json()["data"][0]["id"].to_string();
    b.screenshot("sessions-with-one").await;
    b.click(&b.button(&format!("Kill session {id}")).await).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, client.read(&mut buf)).await.expect("the client sees the close in time");
    assert!(matches!(n, Ok(0) | Err(_)), "the client is closed: {n:?}");
    row_with(&b, "No session matches.").await;
    let metrics = String::from_utf8_lossy(&get(ui.admin, "/metrics").await.body).into_owned();
    assert!(metrics.contains("strait_sessions_closed_by_admin_total 1"), "{metrics}");
    no_console_errors(&b, "services, routes, sessions").await;
    drop(ui.gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cidr_shows_the_admin_apis_message_next_to_its_field() {
    let ui = start(&[]);
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/#/routes", ui.gui)).await;
    b.click(&b.button("New route").await).await;
    b.fill(&form_field(&b, "sources").await, "10.0.0.0/33").await;
    b.fill(&form_field(&b, "destinations").await, ":9").await;
    b.click(&b.button("Create route").await).await;
    // The message the Admin API gives for this body, word for word.
    let direct = send_json(
        ui.admin,
        "POST",
        "/routes",
        &json!({"protocols": ["tcp"], "sources": [{"ip": "10.0.0.0/33"}], "destinations": [{"port": 9}]}),
    )
    .await
    .json();
    let expected = direct["fields"]["sources"][0]["ip"].as_str().expect("a message for sources[0].ip").to_owned();
    b.until(
        "the message by the sources field",
        "const l = [...document.querySelectorAll('form.entity-form label')].find(l => l.textContent.trim() === 'sources'); \
         const box = l && l.closest('.field'); \
         return !!box && box.querySelector('.field-error').textContent.includes(arguments[0]) \
           && document.getElementById(l.htmlFor).getAttribute('aria-invalid') === 'true';",
        json!([expected]),
    )
    .await;
    // The other fields carry no error, and nothing was created.
    let others: Value = b
        .run(
            "return [...document.querySelectorAll('form.entity-form .field')].filter(f => \
               f.querySelector('label').textContent.trim() !== 'sources' && f.querySelector('.field-error').textContent).length",
            json!([]),
        )
        .await;
    assert_eq!(others, 0);
    assert_eq!(get(ui.admin, "/routes").await.json()["data"], json!([]));
    b.screenshot("route-form-error").await;
    // The browser reports the refused POST itself; nothing else.
    no_console_errors_but(&b, "routes", Some(("/api/routes", 400))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_moves_with_traffic_and_the_route_tester_answers() {
    let ui = start(&[]);
    let backend = Backend::plain("ov").await;
    let r = send_json(ui.admin, "POST", "/services", &json!({"name": "ov", "url": format!("tcp://{}", backend.addr)}))
        .await;
    assert_eq!(r.status, 201);
    let r = send_json(
        ui.admin,
        "POST",
        "/services/ov/routes",
        &json!({"name": "ov-route", "protocols": ["tcp"], "destinations": [{"port": ui.stream}]}),
    )
    .await;
    assert_eq!(r.status, 201);
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/#/overview", ui.gui)).await;
    b.until(
        "the overview shows 0 open",
        "return document.querySelector('[data-metric=open]')?.textContent === '0'",
        json!([]),
    )
    .await;
    b.until(
        "the event stream is connected",
        "return document.querySelector('.badge')?.textContent === 'live'",
        json!([]),
    )
    .await;
    // Three sessions that stay open and send bytes.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr(ui.stream)).await.expect("connect");
        read_banner(&mut s).await.expect("banner");
        s.write_all(&[b'x'; 4096]).await.expect("send");
        clients.push(s);
    }
    // The rates are per second of the last poll: they show while it lasts.
    b.until(
        "new sessions per second moved",
        "return parseFloat(document.querySelector('[data-metric=rate]')?.textContent) > 0",
        json!([]),
    )
    .await;
    b.until(
        "bytes received per second moved",
        "return !/^0 B/.test(document.querySelector('[data-metric=received]')?.textContent || '0 B')",
        json!([]),
    )
    .await;
    b.until(
        "the overview shows 3 open",
        "return document.querySelector('[data-metric=open]')?.textContent === '3'",
        json!([]),
    )
    .await;
    b.until(
        "the listener's row shows 3",
        "return [...document.querySelectorAll('[aria-label=\"Sessions open by listener\"] tbody tr')].some(r => r.textContent.includes(arguments[0]) && r.textContent.endsWith('3'))",
        json!([format!("127.0.0.1:{}", ui.stream)]),
    )
    .await;
    b.until(
        "the event feed lists the opens",
        "return document.querySelectorAll('.feed .ev-open').length === 3",
        json!([]),
    )
    .await;
    b.screenshot("overview-busy").await;
    drop(clients);
    b.until(
        "closes by reason count the three",
        "return [...document.querySelectorAll('[aria-label=\"Closes by reason\"] tbody tr')].some(r => r.children[1]?.textContent === '3')",
        json!([]),
    )
    .await;
    b.until(
        "the overview shows 0 open again",
        "return document.querySelector('[data-metric=open]')?.textContent === '0'",
        json!([]),
    )
    .await;
    let sent: Value = b.run("return document.querySelector('[data-metric=received]').textContent", json!([])).await;
    assert!(sent.as_str().is_some_and(|s| s.ends_with("/s")), "{sent}");
    no_console_errors(&b, "overview").await;

    // The route tester.
    b.goto(&format!("{}/#/tester", ui.gui)).await;
    b.fill(&b.field("form", "destination").await, &format!("127.0.0.1:{}", ui.stream)).await;
    b.click(&b.button("Test route").await).await;
    b.until(
        "the tester names the route",
        "return document.querySelector('[data-result=route]')?.textContent === 'ov-route'",
        json!([]),
    )
    .await;
    b.fill(&b.field("form", "destination").await, "127.0.0.1:1").await;
    b.click(&b.button("Test route").await).await;
    b.until(
        "a miss says so",
        "return document.querySelector('[data-result=route]')?.textContent === 'none'",
        json!([]),
    )
    .await;
    b.screenshot("route-tester").await;
    no_console_errors(&b, "route tester").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_ui_asks_for_it_and_refuses_a_wrong_one() {
    let ui = start(&[("admin_token", "\"s3cret\"")]);
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/#/services", ui.gui)).await;
    b.until("the token prompt is open", "return document.getElementById('token-dialog').open", json!([])).await;
    let input = b.css("#token-input").await;
    // Escape does not leave the page without its token (and hanging).
    b.fill(&input, "\u{E00C}").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.run("return document.getElementById('token-dialog').open", json!([])).await, true);
    b.fill(&input, "wrong").await;
    b.click(&b.button("Sign in").await).await;
    b.until(
        "a wrong token is refused and asked again",
        "return document.getElementById('token-dialog').open && document.getElementById('token-error').textContent.startsWith('Refused')",
        json!([]),
    )
    .await;
    b.screenshot("token-refused").await;
    b.fill(&input, "s3cret").await;
    b.click(&b.button("Sign in").await).await;
    b.until(
        "the services page loads",
        "return !document.getElementById('token-dialog').open && !!document.querySelector('main table')",
        json!([]),
    )
    .await;
    // Kept for the tab only.
    let stored: Value =
        b.run("return [sessionStorage.getItem('strait-admin-token'), localStorage.length]", json!([])).await;
    assert_eq!(stored, json!(["s3cret", 0]));
    // The UI's /api is the Admin API, behind the same token.
    let ui_addr: SocketAddr = ui.gui.trim_start_matches("http://").parse().expect("gui addr");
    assert_eq!(get(ui_addr, "/api/services").await.status, 401);
    assert_eq!(request(ui_addr, "GET", "/api/services", None, &[("Kong-Admin-Token", "s3cret")]).await.status, 200);
    // A 401 from the console is the expected first answer, not a page error.
    no_console_errors_but(&b, "services with a token", Some(("/api/", 401))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_without_console_errors_wide_and_narrow() {
    use test_support::certs::TestCa;
    let ui = start(&[]);
    // Something on every page: a certificate (expiring within 30 days is
    // flagged; this one is not), an upstream with a target, a plugin.
    let ca = TestCa::new("ui CA");
    let leaf = ca.leaf(&["ui.test"]);
    let cert =
        send_json(ui.admin, "POST", "/certificates", &json!({"cert": leaf.cert, "key": leaf.key, "snis": ["ui.test"]}))
            .await;
    assert_eq!(cert.status, 201, "{:?}", cert.json());
    let soon = ca.leaf_for_days(&["soon.test"], 10);
    let r =
        send_json(ui.admin, "POST", "/certificates", &json!({"cert": soon.cert, "key": soon.key, "tags": ["soon"]}))
            .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    let soon_id = r.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(send_json(ui.admin, "POST", "/ca_certificates", &json!({"cert": ca.pem.cert})).await.status, 201);
    assert_eq!(send_json(ui.admin, "POST", "/upstreams", &json!({"name": "pool"})).await.status, 201);
    assert_eq!(
        send_json(ui.admin, "POST", "/upstreams/pool/targets", &json!({"target": "127.0.0.1:9"})).await.status,
        201
    );
    assert_eq!(
        send_json(ui.admin, "POST", "/services", &json!({"name": "s", "host": "pool", "port": 9, "protocol": "tcp"}))
            .await
            .status,
        201
    );
    assert_eq!(
        send_json(ui.admin, "POST", "/plugins", &json!({"name": "ip-restriction", "config": {"allow": ["127.0.0.1"]}}))
            .await
            .status,
        201
    );
    let pages = [
        "overview",
        "services",
        "routes",
        "upstreams",
        "targets",
        "certificates",
        "snis",
        "ca_certificates",
        "plugins",
        "filter-chains",
        "tester",
        "health",
        "sessions",
        "cluster",
        "configuration",
    ];
    let b = Browser::start(1280, 900).await;
    for (width, tag) in [(1280, "wide"), (420, "narrow")] {
        b.resize(width, 900).await;
        for page in pages {
            b.goto(&format!("{}/#/{page}", ui.gui)).await;
            b.until(
                &format!("{page} rendered"),
                "const p = document.querySelector('main .page'); \
                 return !!p && p.dataset.page === arguments[0] && !!p.querySelector('h1') \
                   && [...p.querySelectorAll('[role=alert]')].every(e => !e.textContent.trim())",
                json!([page]),
            )
            .await;
            // Settled: lists and details fetched.
            tokio::time::sleep(Duration::from_millis(400)).await;
            b.screenshot(&format!("{page}-{tag}")).await;
            no_console_errors(&b, page).await;
        }
    }
    // Certificates: SANs and expiry read from the certificate; the key is
    // never rendered back.
    b.resize(1280, 900).await;
    b.goto(&format!("{}/#/certificates", ui.gui)).await;
    b.until(
        "the SAN and expiry",
        "const t = document.querySelector('main tbody').textContent; return t.includes('ui.test') && /in \\d+ days/.test(t)",
        json!([]),
    )
    .await;
    let id = cert.json()["id"].as_str().expect("id").to_owned();
    // Expiring within 30 days is flagged; the other is not.
    let flags: Value = b
        .run(
            "return Object.fromEntries([...document.querySelectorAll('[data-expiring]')].map(e => \
               [e.closest('tr').dataset.id, e.dataset.expiring + ' ' + e.textContent]))",
            json!([]),
        )
        .await;
    assert!(
        flags[&soon_id]
            .as_str()
            .is_some_and(|f| f.starts_with("true") && f.contains("in 10 days") && f.contains("expires within 30 days")),
        "{flags}"
    );
    assert!(flags[&id].as_str().is_some_and(|f| f.starts_with("false")), "{flags}");
    b.goto(&format!("{}/#/ca_certificates", ui.gui)).await;
    b.until(
        "the CA's expiry",
        "return document.querySelectorAll('main [data-expiring=false]').length === 1",
        json!([]),
    )
    .await;
    b.goto(&format!("{}/#/certificates", ui.gui)).await;
    row_with(&b, "ui.test").await;
    b.click(&b.button(&format!("JSON of certificate {id}")).await).await;
    let json_view = b.text(&b.css("section.json pre").await).await;
    assert!(json_view.contains("BEGIN CERTIFICATE"), "{json_view}");
    assert!(!json_view.contains("PRIVATE KEY"), "a private key was rendered: {json_view}");
    // Editing shows the certificate, never the key; a key typed in is not
    // echoed in the curl hint either.
    b.click(&b.button(&format!("Edit certificate {id}")).await).await;
    let key = form_field(&b, "key").await;
    let shown: Value = b
        .run("return [document.getElementById(arguments[0]).value, document.querySelector('form.entity-form').textContent]", json!([key_id(&b, "key").await]))
        .await;
    assert_eq!(shown[0], "", "the key field starts empty");
    assert!(!shown[1].as_str().unwrap_or_default().contains("PRIVATE KEY"));
    b.fill(&key, &leaf.key).await;
    let hint: Value =
        b.run("return document.querySelector('form.entity-form details.curl pre').textContent", json!([])).await;
    let hint = hint.as_str().unwrap_or_default();
    assert!(hint.contains("<contents of key.pem>") && !hint.contains("PRIVATE KEY"), "{hint}");
    // Lists: search in the page, tags through the Admin API's filter.
    for (name, tag) in [("blue-svc", "blue"), ("red-svc", "red")] {
        let body = json!({"name": name, "url": "tcp://127.0.0.1:9", "tags": [tag]});
        assert_eq!(send_json(ui.admin, "POST", "/services", &body).await.status, 201);
    }
    b.goto(&format!("{}/#/services", ui.gui)).await;
    b.until(
        "three services",
        "return [...document.querySelectorAll('main tbody tr')].map(r => r.children[0].textContent).sort().join(',') === 'blue-svc,red-svc,s'",
        json!([]),
    )
    .await;
    b.fill(&b.field("main", "Search services").await, "red").await;
    b.until("search keeps red-svc", "return [...document.querySelectorAll('main tbody tr')].map(r => r.children[0].textContent).join(',') === 'red-svc'", json!([])).await;
    b.fill(&b.field("main", "Search services").await, "").await;
    b.fill(&b.field("main", "Filter by tag").await, "blue\u{E007}").await;
    b.until("the tag keeps blue-svc", "return [...document.querySelectorAll('main tbody tr')].map(r => r.children[0].textContent).join(',') === 'blue-svc'", json!([])).await;
    // Health lists the target.
    b.goto(&format!("{}/#/health", ui.gui)).await;
    row_with(&b, "127.0.0.1:9").await;
    no_console_errors(&b, "certificates, health").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_page_kills_a_filtered_set_after_stating_its_count_and_health_drains_to_zero() {
    let ui = start(&[]);
    let backend = Backend::plain("pool-member").await;
    for (path, body) in [
        ("/upstreams", json!({"name": "pool"})),
        ("/upstreams/pool/targets", json!({"target": backend.addr.to_string()})),
        ("/services", json!({"name": "pooled", "host": "pool", "port": 1, "protocol": "tcp"})),
        (
            "/services/pooled/routes",
            json!({"name": "pooled-route", "protocols": ["tcp"], "destinations": [{"port": ui.stream}]}),
        ),
    ] {
        let r = send_json(ui.admin, "POST", path, &body).await;
        assert_eq!(r.status, 201, "{path}: {:?}", r.json());
    }
    let connect = || async {
        let mut s = test_support::backend::connect_from("127.0.0.7", addr(ui.stream)).await;
        read_banner(&mut s).await.expect("banner");
        s
    };
    let b = Browser::start(1280, 900).await;

    // Health: draining the target shows its sessions going to zero.
    let mut one = connect().await;
    b.goto(&format!("{}/#/health", ui.gui)).await;
    let target = backend.addr.to_string();
    b.click(&b.button(&format!("Drain {target}")).await).await;
    b.until(
        "the drain counts one session",
        "return document.querySelector('[data-draining]')?.textContent === 'draining: 1 left'",
        json!([]),
    )
    .await;
    b.screenshot("health-draining").await;
    drop(one.shutdown().await);
    drop(one);
    b.until(
        "the drain counts down to zero",
        "return document.querySelector('[data-draining]')?.textContent === 'draining: 0 left'",
        json!([]),
    )
    .await;
    b.click(&b.button(&format!("Stop draining {target}")).await).await;
    b.until("the drain is over", "return !document.querySelector('[data-draining]')", json!([])).await;

    // Sessions: three from 127.0.0.7, one from 127.0.0.1; the filtered kill
    // states its count and closes only those.
    let mut picked = Vec::new();
    for _ in 0..3 {
        picked.push(connect().await);
    }
    let mut other = TcpStream::connect(addr(ui.stream)).await.expect("connect");
    read_banner(&mut other).await.expect("banner");
    b.goto(&format!("{}/#/sessions", ui.gui)).await;
    b.fill(&b.field("form", "client").await, "127.0.0.7").await;
    b.click(&b.button("Apply filters").await).await;
    b.until("three rows", "return document.querySelectorAll('main tbody tr').length === 3 && document.querySelector('.count').textContent === '3 sessions'", json!([]))
        .await;
    // The page by its path, as Kong Manager's links are, lists the same.
    b.goto(&format!("{}/sessions?client=127.0.0.7", ui.gui)).await;
    b.until("three rows by path", "return document.querySelector('.count')?.textContent === '3 sessions'", json!([]))
        .await;
    b.goto(&format!("{}/#/sessions", ui.gui)).await;
    b.fill(&b.field("form", "client").await, "127.0.0.7").await;
    b.click(&b.button("Apply filters").await).await;
    b.until("three rows again", "return document.querySelector('.count')?.textContent === '3 sessions'", json!([]))
        .await;
    // Sorted by bytes, both ways, from the column's header.
    b.click(&b.xpath("//th//button[starts-with(normalize-space(.), 'bytes')]").await).await;
    b.until(
        "sorted by bytes",
        "return document.querySelector('th[aria-sort=ascending]')?.textContent.startsWith('bytes')",
        json!([]),
    )
    .await;
    b.click(&b.button("Kill matching sessions").await).await;
    b.until(
        "the confirmation states the count",
        "return document.getElementById('confirm-dialog').open && document.getElementById('confirm-text').textContent === 'Close 3 sessions matching these filters?'",
        json!([]),
    )
    .await;
    b.screenshot("sessions-confirm-bulk-kill").await;
    b.click(&b.button("Close 3 sessions").await).await;
    for mut s in picked {
        let mut buf = [0u8; 8];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    other.write_all(b"still here").await.expect("the unfiltered session is open");
    let mut buf = [0u8; 10];
    tokio::time::timeout(WAIT, other.read_exact(&mut buf)).await.expect("echo in time").expect("echo");
    assert_eq!(&buf, b"still here");
    no_console_errors(&b, "health, sessions").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_less_pages_are_read_only_and_a_configuration_upload_applies_or_lists_its_errors() {
    let (stream, admin, gui) = (test_support::free_port(), test_support::free_port(), test_support::free_port());
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(
            format!("127.0.0.1:{stream}"),
            "_format_version: \"3.0\"\nservices:\n- name: first\n  url: tcp://127.0.0.1:9\n",
        )
        .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""))
        .setting("admin_gui_listen", &format!("\"127.0.0.1:{gui}\"")),
    );
    let (admin, gui) = (addr(admin), format!("http://127.0.0.1:{gui}"));
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{gui}/#/services")).await;
    row_with(&b, "first").await;
    assert!(b.body_text().await.contains("DB-less: this page is read-only"));
    let buttons: Value = b
        .run("return [...document.querySelectorAll('main button')].map(b => b.textContent).filter(t => /New|Edit|Delete/.test(t))", json!([]))
        .await;
    assert_eq!(buttons, json!([]), "no write action on a DB-less page");

    // The download is a kong.yml Strait takes back as it is.
    let yaml = b
        .run_async(
            "const m = await import('/assets/config.js'); const api = await import('/assets/api.js'); \
             const r = await api.call('GET', '/config'); return m.yaml(JSON.parse(r.body.config));",
            json!([]),
        )
        .await;
    let yaml = yaml.as_str().unwrap_or_else(|| panic!("yaml: {yaml}")).to_owned();
    assert!(yaml.starts_with("_format_version: \"3.0\"\n") && yaml.contains("\nservices:\n  - "), "{yaml}");
    let back = request(admin, "POST", "/config", Some(("text/yaml", yaml.as_bytes())), &[]).await;
    assert!(back.status == 200 || back.status == 201, "{} {:?}", back.status, back.json());

    // An invalid upload: nothing applied, the errors by entity.
    b.goto(&format!("{gui}/#/configuration")).await;
    let doc = b.field("form.upload", "Configuration document").await;
    b.fill(&doc, "_format_version: \"3.0\"\nservices:\n- name: second\n  port: 99999\n").await;
    b.click(&b.button("Validate and apply").await).await;
    b.click(&b.button("Replace configuration").await).await;
    b.until(
        "the errors by entity",
        "const t = document.querySelector('[aria-label=\"Upload result\"]').textContent; \
         return t.includes('Not applied') && t.includes('second') && t.includes('port')",
        json!([]),
    )
    .await;
    b.screenshot("configuration-upload-errors").await;
    assert_eq!(get(admin, "/services/first").await.status, 200, "nothing was applied");
    // A valid one applies.
    b.fill(&doc, "_format_version: \"3.0\"\nservices:\n- name: second\n  url: tcp://127.0.0.1:10\n").await;
    b.click(&b.button("Validate and apply").await).await;
    b.click(&b.button("Replace configuration").await).await;
    b.until(
        "applied",
        "return document.querySelector('[aria-label=\"Upload result\"]').textContent.startsWith('Applied: 1 services')",
        json!([]),
    )
    .await;
    assert_eq!(get(admin, "/services/second").await.status, 200);
    assert_eq!(get(admin, "/services/first").await.status, 404);
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_can_reach_an_admin_api_on_another_origin() {
    let admin_port = test_support::free_port();
    let api = format!("http://127.0.0.1:{admin_port}");
    let (stream, gui) = (test_support::free_port(), test_support::free_port());
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(
            format!("127.0.0.1:{stream}"),
            "_format_version: \"3.0\"\nservices:\n- name: far\n  url: tcp://127.0.0.1:9\n",
        )
        .setting("admin_listen", &format!("\"127.0.0.1:{admin_port}\""))
        .setting("admin_gui_listen", &format!("\"127.0.0.1:{gui}\""))
        .setting("admin_gui_api_url", &format!("{api:?}")),
    );
    let gui_addr = addr(gui);
    // The policy names the Admin API; the UI's own /api is not served.
    let page = get(gui_addr, "/").await;
    let csp =
        page.headers.iter().find(|(k, _)| k == "content-security-policy").map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(csp.contains(&format!("connect-src 'self' {api};")), "{csp}");
    assert_eq!(get(gui_addr, "/api/services").await.status, 404);
    assert_eq!(get(gui_addr, "/gui.json").await.json()["api"], api);
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("http://127.0.0.1:{gui}/#/services")).await;
    row_with(&b, "far").await;
    no_console_errors(&b, "services across origins").await;
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_server_answers_with_its_headers_over_http_and_https() {
    let ui = start(&[]);
    let gui_addr: SocketAddr = ui.gui.trim_start_matches("http://").parse().expect("gui addr");
    let page = get(gui_addr, "/").await;
    assert_eq!(page.status, 200);
    let header = |r: &test_support::http::Response, k: &str| {
        r.headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    assert!(String::from_utf8_lossy(&page.body).contains("<script type=\"module\" src=\"/assets/app.js\">"));
    assert!(header(&page, "content-security-policy").starts_with("default-src 'none'; script-src 'self';"));
    assert_eq!(header(&page, "x-frame-options"), "DENY");
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    let js = get(gui_addr, "/assets/app.js").await;
    assert_eq!(header(&js, "content-type"), "text/javascript; charset=utf-8");
    assert_eq!(get(gui_addr, "/assets/nothing.js").await.status, 404);
    assert_eq!(get(gui_addr, "/nothing.png").await.status, 404);
    // A page's own path is the app too (it routes by it, as Kong Manager's).
    let by_path = get(gui_addr, "/sessions").await;
    assert_eq!((by_path.status, by_path.body.clone()), (200, page.body.clone()));
    assert_eq!(request(gui_addr, "POST", "/", None, &[]).await.status, 405);
    let conf = get(gui_addr, "/gui.json").await.json();
    assert_eq!(conf["api"], "/api");
    assert_eq!(conf["admin_urls"], json!([format!("http://{}", ui.admin)]));
    // The Admin API on the same origin: same answers, no CORS.
    let services = get(gui_addr, "/api/services").await;
    assert_eq!(services.json(), get(ui.admin, "/services").await.json());
    let preflight = request(
        ui.admin,
        "OPTIONS",
        "/services",
        None,
        &[("Origin", "http://elsewhere"), ("Access-Control-Request-Method", "POST")],
    )
    .await;
    assert!(header(&preflight, "access-control-allow-origin").is_empty(), "CORS is off without admin_gui_api_url");
    drop(ui.gw);

    // Cross-origin: the Admin API answers the UI's origin (admin_gui_url) only.
    let admin_port = test_support::free_port();
    let ui = start(&[
        ("admin_listen", &format!("\"127.0.0.1:{admin_port}\"")),
        ("admin_gui_api_url", &format!("\"http://127.0.0.1:{admin_port}\"")),
        ("admin_gui_url", "\"http://ui.example:8002\""),
    ]);
    let admin = addr(admin_port);
    let ok = request(
        admin,
        "OPTIONS",
        "/services",
        None,
        &[("Origin", "http://ui.example:8002"), ("Access-Control-Request-Method", "POST")],
    )
    .await;
    assert_eq!(ok.status, 204);
    assert_eq!(header(&ok, "access-control-allow-origin"), "http://ui.example:8002");
    assert!(header(&ok, "access-control-allow-headers").contains("Kong-Admin-Token"));
    let got = request(admin, "GET", "/services", None, &[("Origin", "http://ui.example:8002")]).await;
    assert_eq!(header(&got, "access-control-allow-origin"), "http://ui.example:8002");
    let other = request(admin, "GET", "/services", None, &[("Origin", "http://evil.example")]).await;
    assert!(header(&other, "access-control-allow-origin").is_empty());
    drop(ui.gw);

    // HTTPS with `ssl`, on the default certificate.
    let port = test_support::free_port();
    let ui = start(&[("admin_gui_listen", &format!("\"127.0.0.1:{port} ssl\""))]);
    let url = format!("https://127.0.0.1:{port}/");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl").args(["-sk", "--max-time", "10", &url]).output()
    })
    .await
    .expect("join")
    .expect("curl (installed by .ci/run)");
    assert!(String::from_utf8_lossy(&out.stdout).contains("<title>Strait</title>"), "{out:?}");
    drop(ui.gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_page_lists_every_node_sharing_the_database() {
    use test_support::pg::PgServer;
    let Some(pg) = PgServer::start() else { return };
    let db = pg.create_database("gui_cluster");
    let node = |gui: Option<u16>| {
        let (stream, admin) = (test_support::free_port(), test_support::free_port());
        let prefix = test_support::gateway::TempDir::new();
        let mut cfg = GatewayConfig::new(format!("127.0.0.1:{stream}"), "_format_version: \"3.0\"\n")
            .setting("prefix", &format!("{:?}", prefix.path()))
            .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""))
            .setting("db_update_frequency", "1");
        if let Some(gui) = gui {
            cfg = cfg.setting("admin_gui_listen", &format!("\"127.0.0.1:{gui}\""));
        }
        for (k, v) in pg.settings(&db) {
            cfg = cfg.setting(&k, &v);
        }
        (Gateway::start(bin(), cfg), addr(admin), prefix)
    };
    let gui = test_support::free_port();
    let (_a, a_admin, _pa) = node(Some(gui));
    let (_b, b_admin, _pb) = node(None);
    let id = |admin| async move { get(admin, "/").await.json()["node_id"].as_str().expect("node id").to_owned() };
    let (a_id, b_id) = (id(a_admin).await, id(b_admin).await);
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("http://127.0.0.1:{gui}/#/cluster")).await;
    row_with(&b, &a_id).await;
    row_with(&b, &b_id).await;
    let notes: Value = b.run("return document.querySelectorAll('main .note').length", json!([])).await;
    assert_eq!(notes, 0, "postgres mode is a cluster, not a cluster of one");
    b.screenshot("cluster-two-nodes").await;
    no_console_errors(&b, "cluster").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_moves_with_a_reload_and_keeps_its_port_through_an_upgrade() {
    let ui = start(&[]);
    let gui_addr: SocketAddr = ui.gui.trim_start_matches("http://").parse().expect("gui addr");
    assert_eq!(get(gui_addr, "/").await.status, 200);
    // An upgrade hands the UI's socket over with the others: the next
    // generation answers on the same port.
    let old = ui.gw.pid();
    let new = tokio::task::block_in_place(|| ui.gw.upgrade(bin()));
    assert_ne!(old, new);
    assert_eq!(get(gui_addr, "/").await.status, 200);
    let status = get(gui_addr, "/api/status").await.json();
    assert_eq!(status["generation"]["number"], 2, "the new generation answers: {status}");
    // A reload moves it to another port and retires the first.
    let next = test_support::free_port();
    let text = std::fs::read_to_string(&ui.gw.conf).expect("settings");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("admin_gui_listen ="))
        .map(|l| format!("{l}\n"))
        .chain([format!("admin_gui_listen = \"127.0.0.1:{next}\"\n")])
        .collect();
    std::fs::write(&ui.gw.conf, text).expect("write settings");
    let out = ui.gw.cli(bin(), &["reload"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(addr(next), "/").await.status, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::net::TcpStream::connect(gui_addr).is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "the old UI port still accepts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_form_changes_only_what_was_changed_and_a_plugin_takes_its_config_as_json() {
    let ui = start(&[]);
    let body = json!({"name": "edit-me", "url": "tcp://127.0.0.1:9", "retries": 3, "tags": ["keep"]});
    assert_eq!(send_json(ui.admin, "POST", "/services", &body).await.status, 201);
    let b = Browser::start(1280, 900).await;
    b.goto(&format!("{}/#/services", ui.gui)).await;
    b.click(&b.button("Edit service edit-me").await).await;
    let port = form_field(&b, "port").await;
    b.fill(&port, "10").await;
    let hint: Value =
        b.run("return document.querySelector('form.entity-form details.curl pre').textContent", json!([])).await;
    assert!(hint.as_str().is_some_and(|h| h.contains("-X PATCH") && h.ends_with("-d '{\"port\":10}'")), "{hint}");
    b.click(&b.button("Save service").await).await;
    row_with(&b, "10").await;
    let svc = get(ui.admin, "/services/edit-me").await.json();
    assert_eq!(
        (svc["port"].clone(), svc["retries"].clone(), svc["tags"].clone()),
        (json!(10), json!(3), json!(["keep"]))
    );

    // A plugin on that service, its config as JSON; a bad config is named by its field.
    b.goto(&format!("{}/#/plugins", ui.gui)).await;
    b.click(&b.button("New plugin").await).await;
    b.select(&form_field(&b, "name").await, "ip-restriction").await;
    b.select(&form_field(&b, "service").await, "edit-me").await;
    let config = form_field(&b, "config").await;
    b.fill(&config, "{\"allow\": \"not a list\"}").await;
    b.click(&b.button("Create plugin").await).await;
    b.until(
        "the config error by the config field",
        "const l = [...document.querySelectorAll('form.entity-form label')].find(l => l.textContent.trim() === 'config'); \
         return !!l && l.closest('.field').querySelector('.field-error').textContent.includes('allow')",
        json!([]),
    )
    .await;
    b.fill(&config, "{\"allow\": [\"127.0.0.1\"]}").await;
    b.click(&b.button("Create plugin").await).await;
    row_with(&b, "ip-restriction").await;
    let plugins = get(ui.admin, "/services/edit-me/plugins").await.json();
    assert_eq!(plugins["data"][0]["config"]["allow"], json!(["127.0.0.1"]), "{plugins}");
    no_console_errors_but(&b, "plugins", Some(("/api/plugins", 400))).await;
}
