//! TLS through the real binary: termination by SNI, passthrough, TLS on a
//! plain port, upstream TLS, and bad clients.

use std::path::Path;
use std::time::Duration;

use test_support::backend::{Backend, closed_without_data, read_banner, tls_connect};
use test_support::certs::{TestCa, client_config, client_config_with_cert, insecure_client_config, server_config};
use test_support::gateway::{Gateway, GatewayConfig, certificate_yaml, one_route, yaml_block};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

/// The DER of the leaf certificate the server presented.
fn presented(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Vec<u8> {
    s.get_ref().1.peer_certificates().expect("peer certificates")[0].as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminates_with_the_certificate_chosen_by_sni() {
    let ca = TestCa::new("test CA");
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test"]);
    let wild = ca.leaf(&["*.wild.test"]);
    let backend = Backend::plain("plain-backend").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}{}{}services:
- name: app
  url: tcp://{}
  routes:
  - name: tls-route
    protocols: [tls]
    snis: [a.test, b.test, "*.wild.test"]
"#,
        certificate_yaml(&a, &["a.test"]),
        certificate_yaml(&b, &["b.test"]),
        certificate_yaml(&wild, &["*.wild.test"]),
        backend.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml));
    let to = format!("127.0.0.1:{port}").parse().unwrap();

    for (sni, want) in [("a.test", &a), ("b.test", &b), ("x.wild.test", &wild)] {
        let mut s = tls_connect(to, sni, client_config(&ca)).await.unwrap();
        assert_eq!(presented(&s), want.leaf_der(), "certificate for {sni}");
        assert_eq!(read_banner(&mut s).await.unwrap(), "plain-backend");
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
    }
    // The route's `*.x` matches any depth; a certificate's `*.x` only one
    // label, so the default certificate is served.
    let mut deep = tls_connect(to, "y.x.wild.test", insecure_client_config()).await.unwrap();
    assert_ne!(presented(&deep), wild.leaf_der());
    assert_eq!(read_banner(&mut deep).await.unwrap(), "plain-backend");
    gw.wait_log(&["protocol=tls", "sni=b.test", "route=tls-route"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_is_refused() {
    let backend = Backend::plain("x").await;
    let port = test_support::free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tls]", "snis: [known.test]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml));
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(tls_connect(to, "unknown.test", insecure_client_config()).await.is_err());
    gw.wait_log(&[" 500 ", "sni=unknown.test", "reason=\"no route\""]).await;
    assert_eq!(backend.accepted(), 0);
    // The known name still works.
    let mut ok = tls_connect(to, "known.test", insecure_client_config()).await.unwrap();
    assert_eq!(read_banner(&mut ok).await.unwrap(), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_recognised_on_a_plain_port() {
    let ca = TestCa::new("test CA");
    let leaf = ca.leaf(&["mixed.test"]);
    let backend = Backend::plain("mixed").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}services:
- url: tcp://{}
  routes:
  - name: both
    protocols: [tcp, tls]
    destinations: [{{port: {port}}}]
"#,
        certificate_yaml(&leaf, &["mixed.test"]),
        backend.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    // A TLS client is terminated with the certificate for its SNI...
    let mut tls = tls_connect(to, "mixed.test", client_config(&ca)).await.unwrap();
    assert_eq!(presented(&tls), leaf.leaf_der());
    assert_eq!(read_banner(&mut tls).await.unwrap(), "mixed");
    // ...and a plain client on the same port is proxied as plain TCP.
    let mut plain = TcpStream::connect(to).await.unwrap();
    plain.write_all(b"hello").await.unwrap();
    assert_eq!(read_banner(&mut plain).await.unwrap(), "mixed");
    let mut back = [0u8; 5];
    plain.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hello");
    // Sessions are logged when they close.
    drop((tls, plain));
    gw.wait_log(&["protocol=tls", "sni=mixed.test"]).await;
    gw.wait_log(&["protocol=tcp", "route=both"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_client_sees_the_backend_certificate() {
    let ca = TestCa::new("backend CA");
    let backend_leaf = ca.leaf(&["pass.test"]);
    let backend = Backend::tls("tls-backend", server_config(&backend_leaf, None)).await;
    let other = Backend::plain("terminated").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: pass
  url: tcp://{}
  routes:
  - name: passthrough
    protocols: [tls_passthrough]
    snis: ["*.pass.test", pass.test]
- name: term
  url: tcp://{}
  routes:
  - protocols: [tls]
    snis: [term.test]
"#,
        backend.addr, other.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml));
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    // Verified against the backend's CA: only the backend could have answered.
    let mut s = tls_connect(to, "pass.test", client_config(&ca)).await.unwrap();
    assert_eq!(presented(&s), backend_leaf.leaf_der());
    assert_eq!(read_banner(&mut s).await.unwrap(), "tls-backend");
    s.write_all(b"through").await.unwrap();
    let mut back = [0u8; 7];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"through");
    // Termination and passthrough share the ssl port.
    let mut t = tls_connect(to, "term.test", insecure_client_config()).await.unwrap();
    assert_eq!(read_banner(&mut t).await.unwrap(), "terminated");
    drop((s, t));
    gw.wait_log(&["protocol=tls_passthrough", "sni=pass.test", "route=passthrough"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_with_verification_and_client_certificate() {
    let server_ca = TestCa::new("upstream CA");
    let client_ca = TestCa::new("client CA");
    let upstream_leaf = server_ca.leaf(&["127.0.0.1"]);
    // Valid only for its name: reachable only if that name is sent and verified.
    let named_leaf = server_ca.leaf(&["upstream.test"]);
    let client_leaf = client_ca.leaf(&["strait.test"]);
    let backend = Backend::tls("mtls-backend", server_config(&upstream_leaf, Some(&client_ca))).await;
    let named = Backend::tls("named-backend", server_config(&named_leaf, Some(&client_ca))).await;
    let wrong_ca = TestCa::new("someone else");
    let (p_ok, p_bad, p_name) = (test_support::free_port(), test_support::free_port(), test_support::free_port());
    let client_cert_id = "4b6c5a9e-8f1d-4c3e-9a2b-1d2e3f4a5b6c";
    let yaml = format!(
        r#"_format_version: "3.0"
ca_certificates:
- id: 2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f
  cert: |
{ca}- id: 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d
  cert: |
{wrong}certificates:
- id: {client_cert_id}
  cert: |
{ccert}  key: |
{ckey}services:
- name: verified
  url: tls://{addr}
  tls_verify: true
  ca_certificates: [2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f]
  client_certificate: {{id: {client_cert_id}}}
  routes:
  - protocols: [tcp]
    destinations: [{{port: {p_ok}}}]
- name: wrong-ca
  url: tls://{addr}
  tls_verify: true
  ca_certificates: [9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d]
  client_certificate: {{id: {client_cert_id}}}
  routes:
  - protocols: [tcp]
    destinations: [{{port: {p_bad}}}]
- name: by-name
  url: tls://Pool.Internal:{port}
  tls_verify: true
  tls_verify_depth: 1
  ca_certificates: [2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f]
  client_certificate: {{id: {client_cert_id}}}
  routes:
  - protocols: [tcp]
    destinations: [{{port: {p_name}}}]
upstreams:
- name: pool.internal
  host_header: upstream.test
  targets:
  - target: 127.0.0.1:{port}
"#,
        ca = yaml_block(&server_ca.pem.cert, 4),
        wrong = yaml_block(&wrong_ca.pem.cert, 4),
        ccert = yaml_block(&client_leaf.cert, 4),
        ckey = yaml_block(&client_leaf.key, 4),
        addr = backend.addr,
        port = named.addr.port(),
    );
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{p_ok}, 127.0.0.1:{p_bad}, 127.0.0.1:{p_name}"), yaml),
    );
    // Plain in, TLS (verified by IP SAN, with our client certificate) out.
    let mut s = TcpStream::connect(("127.0.0.1", p_ok)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "mtls-backend");
    s.write_all(b"secret").await.unwrap();
    let mut back = [0u8; 6];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"secret");

    // A service naming an upstream (case-insensitively): the upstream's
    // host_header is the SNI and the name verified.
    let mut n = TcpStream::connect(("127.0.0.1", p_name)).await.unwrap();
    assert_eq!(read_banner(&mut n).await.unwrap(), "named-backend");

    // The wrong CA: verification fails, the client is closed, status 502.
    let mut bad = TcpStream::connect(("127.0.0.1", p_bad)).await.unwrap();
    assert!(closed_without_data(&mut bad).await);
    let line = gw.wait_log(&[" 502 ", "service=wrong-ca", "reason=\"upstream tls failed\""]).await;
    assert!(line.contains("UnknownIssuer") || line.contains("issuer"), "{line}");
    assert!(line.contains("tries=6"), "a failed handshake is retried (1 + 5 retries): {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_closed_and_do_not_stall_others() {
    let backend = Backend::plain("ok").await;
    let port = test_support::free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tls]", "snis: [ok.test]"]);
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml).setting("preread_timeout", "\"2s\""),
    );
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Silent clients and a client stuck mid-ClientHello, held open meanwhile.
    let mut silent = TcpStream::connect(to).await.unwrap();
    let mut half = TcpStream::connect(to).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]).await.unwrap();

    // Garbage that is not TLS.
    let mut garbage = TcpStream::connect(to).await.unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    assert!(closed_without_data(&mut garbage).await);

    // A record that claims to be a handshake but is not a ClientHello.
    let mut bogus = TcpStream::connect(to).await.unwrap();
    bogus.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00]).await.unwrap();
    assert!(closed_without_data(&mut bogus).await);

    // An oversized "ClientHello".
    let mut big = TcpStream::connect(to).await.unwrap();
    let mut rec = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    rec.resize(5 + 0x4000, 0x41);
    let _ = big.write_all(&rec).await;
    assert!(closed_without_data(&mut big).await);

    // Meanwhile a good client is served.
    let mut good = tls_connect(to, "ok.test", insecure_client_config()).await.unwrap();
    assert_eq!(read_banner(&mut good).await.unwrap(), "ok");

    // The stuck ones are closed at preread_timeout.
    assert!(closed_without_data(&mut silent).await);
    assert!(closed_without_data(&mut half).await);
    gw.wait_log(&[" 400 ", "reason=\"not tls\""]).await;
    gw.wait_log(&[" 400 ", "reason=\"bad client hello\""]).await;
    gw.wait_log(&[" 400 ", "reason=\"preread timeout\""]).await;

    // A client that vanishes mid-handshake.
    let mut vanishing = TcpStream::connect(to).await.unwrap();
    vanishing.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    drop(vanishing);
    let mut again = tls_connect(to, "ok.test", insecure_client_config()).await.unwrap();
    assert_eq!(read_banner(&mut again).await.unwrap(), "ok");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!gw.stderr().contains("panicked"), "{}", gw.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserve_host_sends_the_client_sni_upstream() {
    let ca = TestCa::new("upstream CA");
    // The backend's certificate names only the client-facing host, not its IP.
    let leaf = ca.leaf(&["client-name.test"]);
    let backend = Backend::tls("named-backend", server_config(&leaf, None)).await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
ca_certificates:
- id: 2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f
  cert: |
{ca}services:
- name: preserve
  url: tls://{addr}
  tls_verify: true
  ca_certificates: [2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f]
  routes:
  - protocols: [tls]
    snis: [client-name.test]
    preserve_host: true
- name: by-ip
  url: tls://{addr}
  tls_verify: true
  ca_certificates: [2f4f1c1e-3d5b-4a8e-9c7d-6b5a4c3d2e1f]
  routes:
  - protocols: [tls]
    snis: [other-name.test]
"#,
        ca = yaml_block(&ca.pem.cert, 4),
        addr = backend.addr,
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml));
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    // Verified as client-name.test upstream: only possible with the client's SNI.
    let mut s = tls_connect(to, "client-name.test", insecure_client_config()).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "named-backend");
    // Without preserve_host the IP is verified (and no SNI sent): the name check fails.
    let mut bad = tls_connect(to, "other-name.test", insecure_client_config()).await.unwrap();
    assert!(closed_without_data(&mut bad).await);
    let line = gw.wait_log(&[" 502 ", "service=by-ip", "reason=\"upstream tls failed\""]).await;
    assert!(line.contains("NotValidForName"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_is_the_default_certificate() {
    let ca = TestCa::new("default CA");
    let default = ca.leaf(&["default.test", "127.0.0.1"]);
    let named = ca.leaf(&["named.test"]);
    let backend = Backend::plain("behind").await;
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}services:
- url: tcp://{}
  routes:
  - protocols: [tls]
    destinations: [{{port: {port}}}]
"#,
        certificate_yaml(&named, &["named.test"]),
        backend.addr
    );
    let (cert, key) = (TempFile::new("default.crt", &default.cert), TempFile::new("default.key", &default.key));
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml)
            .setting("ssl_cert", &format!("{:?}", cert.0))
            .setting("ssl_cert_key", &format!("{:?}", key.0)),
    );
    let to = format!("127.0.0.1:{port}").parse().unwrap();
    // No SNI at all (an IP address as the server name sends none).
    let mut s = tls_connect(to, "127.0.0.1", client_config(&ca)).await.unwrap();
    assert_eq!(presented(&s), default.leaf_der());
    assert_eq!(read_banner(&mut s).await.unwrap(), "behind");
    // An SNI no certificate names.
    let s2 = tls_connect(to, "other.test", insecure_client_config()).await.unwrap();
    assert_eq!(presented(&s2), default.leaf_der());
    // A named certificate still wins for its name.
    let s3 = tls_connect(to, "named.test", client_config(&ca)).await.unwrap();
    assert_eq!(presented(&s3), named.leaf_der());
    drop((s, s2, s3));
    gw.wait_log(&["protocol=tls", "sni=-"]).await;
}

/// A file in a folder of its own, removed with it.
struct TempFile(std::path::PathBuf, #[allow(dead_code)] test_support::gateway::TempDir);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = test_support::gateway::TempDir::new();
        TempFile(dir.write(name, text), dir)
    }
}

/// Connects twice with one client configuration (which keeps what the
/// server sent to resume with) and says how the second handshake went.
async fn second_handshake(to: std::net::SocketAddr, ca: &TestCa) -> rustls::HandshakeKind {
    let config = client_config(ca);
    for _ in 0..2 {
        let mut s = tls_connect(to, "a.test", config.clone()).await.expect("TLS connect");
        // Reading past the handshake takes in the server's session tickets.
        assert_eq!(read_banner(&mut s).await.expect("banner"), "plain-backend");
        let kind = s.get_ref().1.handshake_kind().expect("handshake done");
        if kind == rustls::HandshakeKind::Resumed {
            return kind;
        }
    }
    rustls::HandshakeKind::Full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumption_follows_ssl_session_tickets_and_cache_size() {
    let ca = TestCa::new("test CA");
    let a = ca.leaf(&["a.test"]);
    let backend = Backend::plain("plain-backend").await;
    let yaml = format!(
        "_format_version: \"3.0\"\ncertificates:\n{}services:\n- url: tcp://{}\n  routes:\n  - protocols: [tls]\n    snis: [a.test]\n",
        certificate_yaml(&a, &["a.test"]),
        backend.addr
    );
    for (tickets, cache, want) in [
        // Kong's defaults: tickets on, a 10m cache.
        (None, None, rustls::HandshakeKind::Resumed),
        // Tickets off: resumed from the session cache.
        (Some("\"off\""), None, rustls::HandshakeKind::Resumed),
        // The cache off: resumed with a stateless ticket.
        (None, Some("\"off\""), rustls::HandshakeKind::Resumed),
        // Both off: every handshake is a full one.
        (Some("\"off\""), Some("\"off\""), rustls::HandshakeKind::Full),
    ] {
        let port = test_support::free_port();
        let mut config = GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml.clone());
        if let Some(t) = tickets {
            config = config.setting("ssl_session_tickets", t);
        }
        if let Some(c) = cache {
            config = config.setting("ssl_session_cache_size", c);
        }
        let _gw = Gateway::start(bin(), config);
        let to = format!("127.0.0.1:{port}").parse().unwrap();
        assert_eq!(second_handshake(to, &ca).await, want, "tickets {tickets:?}, cache {cache:?}");
    }
}

/// Replaces the configuration through the Admin API (`POST /config`).
async fn post_config(admin: u16, body: String) {
    let to = format!("127.0.0.1:{admin}").parse().expect("address");
    let r = test_support::http::request(to, "POST", "/config", Some(("application/yaml", body.as_bytes())), &[]).await;
    assert_eq!(r.status, 201, "{:?}", r.json());
}

/// One handshake with `config` (which keeps what the server gave it to
/// resume with): how it went, and the certificate the server presented.
async fn handshake(
    to: std::net::SocketAddr,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, Vec<u8>) {
    let mut s = tls_connect(to, "a.test", config.clone()).await.expect("TLS connect");
    // Reading past the handshake takes in the server's session tickets.
    assert_eq!(read_banner(&mut s).await.expect("banner"), "plain-backend");
    (s.get_ref().1.handshake_kind().expect("handshake done"), presented(&s))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_resumable_across_changes_that_leave_tls_alone() {
    let ca = TestCa::new("test CA");
    let backend = Backend::plain("plain-backend").await;
    let doc = |leaf: &test_support::certs::Pem, extra: Option<u16>| {
        let mut d = format!(
            "_format_version: \"3.0\"\ncertificates:\n{}services:\n- url: tcp://{}\n  routes:\n  - protocols: [tls]\n    snis: [a.test]\n",
            certificate_yaml(leaf, &["a.test"]),
            backend.addr
        );
        if let Some(port) = extra {
            d.push_str(&format!("  - protocols: [tcp]\n    destinations: [{{port: {port}}}]\n"));
        }
        d
    };
    use rustls::HandshakeKind::{Full, Resumed};
    // With stateless tickets alone, and with the session cache alone.
    for (tickets, cache) in [("\"on\"", "\"off\""), ("\"off\"", "\"10m\"")] {
        let (port, admin) = (test_support::free_port(), test_support::free_port());
        let first = ca.leaf(&["a.test"]);
        let config = GatewayConfig::new(format!("127.0.0.1:{port} ssl"), doc(&first, None))
            .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""))
            .setting("ssl_session_tickets", tickets)
            .setting("ssl_session_cache_size", cache);
        let _gw = Gateway::start(bin(), config);
        let to = format!("127.0.0.1:{port}").parse().expect("address");
        let client = client_config(&ca);
        let case = format!("tickets {tickets}, cache {cache}");
        assert_eq!(handshake(to, &client).await.0, Full, "{case}");
        assert_eq!(handshake(to, &client).await.0, Resumed, "{case}");

        // A new route: the TLS configuration is the same, sessions resume.
        post_config(admin, doc(&first, Some(test_support::free_port()))).await;
        assert_eq!(handshake(to, &client).await.0, Resumed, "{case}: after a change that leaves TLS alone");

        // A new certificate for the name: nothing made under the old one resumes.
        let second = ca.leaf(&["a.test"]);
        post_config(admin, doc(&second, None)).await;
        let (kind, cert) = handshake(to, &client).await;
        assert_eq!((kind, cert == second.leaf_der()), (Full, true), "{case}: after a certificate change");
        assert_eq!(handshake(to, &client).await.0, Resumed, "{case}: under the new certificate");
    }
}

/// A handshake that must neither resume nor reach the upstream.
async fn refused(to: std::net::SocketAddr, config: &std::sync::Arc<rustls::ClientConfig>, case: &str) {
    match tls_connect(to, "a.test", config.clone()).await {
        Err(_) => {}
        Ok(mut s) => {
            assert_ne!(s.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "{case}: resumed");
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("no answer in time");
            assert!(matches!(r, Err(_) | Ok(0)), "{case}: the session reached the upstream");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_resumes_once_client_certificate_rules_change() {
    let ca = TestCa::new("test CA");
    let client_ca = TestCa::new("client CA");
    let a = ca.leaf(&["a.test"]);
    let alice = client_ca.leaf(&["alice.clients.test"]);
    let backend = Backend::plain("plain-backend").await;
    let ca_id = "6a1e2f4c-7b0d-4e5f-8a9b-0c1d2e3f4a5b";
    let doc = |allowed: Option<&str>| {
        let mut d = format!(
            "_format_version: \"3.0\"\ncertificates:\n{}ca_certificates:\n- id: {ca_id}\n  cert: |\n{}services:\n- url: tcp://{}\n  routes:\n  - protocols: [tls]\n    snis: [a.test]\n",
            certificate_yaml(&a, &["a.test"]),
            yaml_block(&client_ca.pem.cert, 4),
            backend.addr
        );
        if let Some(name) = allowed {
            d.push_str(&format!(
                "    plugins:\n    - name: mtls-auth\n      config: {{ca_certificates: [{ca_id}], allowed_names: [{name}]}}\n"
            ));
        }
        d
    };
    use rustls::HandshakeKind::{Full, Resumed};
    // With stateless tickets alone, and with the session cache alone.
    for (tickets, cache) in [("\"on\"", "\"off\""), ("\"off\"", "\"10m\"")] {
        let (port, admin) = (test_support::free_port(), test_support::free_port());
        let config = GatewayConfig::new(format!("127.0.0.1:{port} ssl"), doc(None))
            .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""))
            .setting("ssl_session_tickets", tickets)
            .setting("ssl_session_cache_size", cache);
        let _gw = Gateway::start(bin(), config);
        let to = format!("127.0.0.1:{port}").parse().expect("address");
        let case = format!("tickets {tickets}, cache {cache}");

        // A session made on the open route, then mtls-auth added to it.
        let anonymous = client_config(&ca);
        assert_eq!(handshake(to, &anonymous).await.0, Full, "{case}");
        assert_eq!(handshake(to, &anonymous).await.0, Resumed, "{case}");
        post_config(admin, doc(Some("alice.clients.test"))).await;
        refused(to, &anonymous, &format!("{case}: once mtls-auth applies")).await;

        // Alice's session under a rule that names her, then one that does not.
        let as_alice = client_config_with_cert(&ca, &alice);
        assert_eq!(handshake(to, &as_alice).await.0, Full, "{case}");
        assert_eq!(handshake(to, &as_alice).await.0, Resumed, "{case}");
        post_config(admin, doc(Some("bob.clients.test"))).await;
        refused(to, &as_alice, &format!("{case}: once her name is no longer allowed")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_never_resumes_where_mtls_auth_asks_for_a_certificate() {
    let ca = TestCa::new("test CA");
    let client_ca = TestCa::new("client CA");
    let a = ca.leaf(&["a.test"]);
    let backend = Backend::plain("plain-backend").await;
    let (open, strict) = (test_support::free_port(), test_support::free_port());
    let ca_id = "6a1e2f4c-7b0d-4e5f-8a9b-0c1d2e3f4a5b";
    let yaml = format!(
        r#"_format_version: "3.0"
certificates:
{}ca_certificates:
- id: {ca_id}
  cert: |
{}services:
- url: tcp://{}
  routes:
  - name: open
    protocols: [tls]
    snis: [a.test]
    destinations: [{{port: {open}}}]
  - name: strict
    protocols: [tls]
    snis: [a.test]
    destinations: [{{port: {strict}}}]
    plugins:
    - name: mtls-auth
      config:
        ca_certificates: [{ca_id}]
"#,
        certificate_yaml(&a, &["a.test"]),
        yaml_block(&client_ca.pem.cert, 4),
        backend.addr
    );
    // With tickets (their keys), and with the session cache alone (its partitions).
    for tickets in ["\"on\"", "\"off\""] {
        let config = GatewayConfig::new(format!("127.0.0.1:{open} ssl, 127.0.0.1:{strict} ssl"), yaml.clone())
            .setting("ssl_session_tickets", tickets);
        let gw = Gateway::start(bin(), config);
        offer_open_session_to_strict_route(open, strict, &ca).await;
        drop(gw);
    }
}

async fn offer_open_session_to_strict_route(open: u16, strict: u16, ca: &TestCa) {
    // One client configuration, no client certificate: it keeps the tickets
    // the open route's handshake gave it, and offers them to the strict one.
    let config = client_config(ca);
    let open_to = format!("127.0.0.1:{open}").parse().expect("address");
    let mut s = tls_connect(open_to, "a.test", config.clone()).await.expect("open route");
    assert_eq!(read_banner(&mut s).await.expect("banner"), "plain-backend");
    drop(s);
    let again = tls_connect(open_to, "a.test", config.clone()).await.expect("open route again");
    assert_eq!(again.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed), "resumes where it was made");
    drop(again);

    let strict_to = format!("127.0.0.1:{strict}").parse().expect("address");
    match tls_connect(strict_to, "a.test", config).await {
        Err(_) => {}
        Ok(mut s) => {
            assert_ne!(s.get_ref().1.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await.expect("no answer in time");
            assert!(matches!(r, Err(_) | Ok(0)), "without a certificate the session must not reach the upstream");
        }
    }
}
