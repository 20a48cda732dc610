//! QUIC routed by server name through UDP listeners: real quinn clients and
//! servers, the gateway reading only the Initial packets' ClientHello.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use test_support::WAIT;
use test_support::certs::TestCa;
use test_support::gateway::{Gateway, GatewayConfig};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A QUIC server for `name` that answers every stream with `name`.
fn quic_server(ca: &TestCa, name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let pem = ca.leaf(&[name]);
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(pem.chain(), pem.private_key())
        .expect("server cert");
    let config = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls).expect("QUIC server")));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("addr")).expect("server endpoint");
    let addr = endpoint.local_addr().expect("server addr");
    let task = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let _ = recv.read_to_end(64).await;
                    let _ = send.write_all(name.as_bytes()).await;
                    let _ = send.finish();
                }
            });
        }
    });
    (addr, task)
}

/// Opens a QUIC connection to the gateway for `sni` and returns the name the
/// server behind it answers with.
async fn ask(ca: &TestCa, gateway: SocketAddr, sni: &str) -> String {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("QUIC client"),
    )));
    let run = async {
        let conn = endpoint.connect(gateway, sni).expect("connect").await.expect("handshake");
        let (mut send, mut recv) = conn.open_bi().await.expect("stream");
        send.write_all(b"who?").await.expect("write");
        send.finish().expect("finish");
        let answer = recv.read_to_end(64).await.expect("read");
        conn.close(0u32.into(), b"done");
        String::from_utf8(answer).expect("utf-8")
    };
    let answer = tokio::time::timeout(WAIT, run).await.expect("QUIC exchange in time");
    let _ = tokio::time::timeout(WAIT, endpoint.wait_idle()).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_are_routed_by_the_sni_of_their_initial() {
    let ca = TestCa::new("quic CA");
    let (a, _ta) = quic_server(&ca, "a.quic.test");
    let (b, _tb) = quic_server(&ca, "b.quic.test");
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: a
  url: udp://{a}
  read_timeout: 300
  routes: [{{protocols: [udp], snis: [a.quic.test]}}]
- name: b
  url: udp://{b}
  read_timeout: 300
  routes: [{{protocols: [udp], snis: ["*.quic.test"]}}]
"#
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} udp"), yaml));
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    assert_eq!(ask(&ca, to, "a.quic.test").await, "a.quic.test");
    assert_eq!(ask(&ca, to, "b.quic.test").await, "b.quic.test", "the wildcard route");
    let line = gw.wait_log(&["UDP 200", "sni=a.quic.test", "service=a"]).await;
    assert!(line.contains("protocol=udp"), "{line}");
}
