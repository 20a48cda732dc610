//! PROXY protocol through the real binary: headers in front of plain and TLS
//! sessions from a trusted balancer decide routing and the logged client;
//! untrusted or broken headers are refused; services send v1/v2 headers to
//! their upstreams, before upstream TLS too.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use test_support::WAIT;
use test_support::backend::{Backend, closed_without_data, connect_from, read_banner};
use test_support::certs::{TestCa, client_config, insecure_client_config, server_config};
use test_support::gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

fn v2_header(cmd: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut body = Vec::new();
    let fam = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | cmd);
    h.push(fam);
    h.extend_from_slice(&(body.len() as u16).to_be_bytes());
    h.extend_from_slice(&body);
    h
}

/// Connects from 127.0.0.1, sends `header`, returns the backend's banner.
async fn banner_after(port: u16, header: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    s.write_all(header).await.expect("header");
    read_banner(&mut s).await.expect("banner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_decides_routing_and_the_logged_client() {
    let (a, b, c, d) =
        (Backend::plain("a").await, Backend::plain("b").await, Backend::plain("c").await, Backend::plain("d").await);
    let port = test_support::free_port();
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: from-office
  url: tcp://{a}
  routes: [{{protocols: [tcp], sources: [{{ip: 10.1.0.0/16}}]}}]
- name: fallback
  url: tcp://{b}
  routes: [{{protocols: [tcp], destinations: [{{port: {port}}}]}}]
- name: from-v6
  url: tcp://{c}
  routes: [{{protocols: [tcp], sources: [{{ip: "2001:db8::/32"}}]}}]
- name: to-vip
  url: tcp://{d}
  routes: [{{protocols: [tcp], destinations: [{{ip: 198.51.100.7, port: 443}}]}}]
"#,
        a = a.addr,
        b = b.addr,
        c = c.addr,
        d = d.addr
    );
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port} proxy_protocol"), yaml).setting("trusted_ips", "[\"127.0.0.1\"]"),
    );
    let v1 = format!("PROXY TCP4 10.1.2.3 127.0.0.1 5555 {port}\r\n");
    assert_eq!(banner_after(port, v1.as_bytes()).await, "a", "routed on the header's source");
    let line = gw.wait_log(&["service=from-office"]).await;
    assert!(line.starts_with("10.1.2.3:5555 "), "the header's client is logged: {line}");
    assert!(line.contains("proxied_by=127.0.0.1:"), "{line}");

    let v6 = v2_header(1, "[2001:db8::5]:4000".parse().unwrap(), "[2001:db8::1]:443".parse().unwrap());
    assert_eq!(banner_after(port, &v6).await, "c");
    gw.wait_log(&["[2001:db8::5]:4000 ", "service=from-v6"]).await;

    let vip = v2_header(1, "192.0.2.9:1000".parse().unwrap(), "198.51.100.7:443".parse().unwrap());
    assert_eq!(banner_after(port, &vip).await, "d", "routed on the header's destination");

    // LOCAL (the balancer's own check) and UNKNOWN keep the real addresses.
    let local = v2_header(0, "10.1.2.3:1".parse().unwrap(), "10.9.9.9:2".parse().unwrap());
    assert_eq!(banner_after(port, &local).await, "b");
    assert_eq!(banner_after(port, b"PROXY UNKNOWN\r\n").await, "b");

    // Bytes after the header reach the upstream.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("PROXY TCP4 10.1.2.3 127.0.0.1 5556 {port}\r\nping").as_bytes()).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "a");
    let mut echo = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut echo)).await.unwrap().unwrap();
    assert_eq!(&echo, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_missing_and_broken_headers_are_refused() {
    let a = Backend::plain("a").await;
    let port = test_support::free_port();
    let yaml = test_support::gateway::one_route(a.addr, &[], &["protocols: [tcp]", "destinations: [{port: 1}]"])
        .replace("port: 1}", &format!("port: {port}}}"));
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port} proxy_protocol"), yaml)
            .setting("trusted_ips", "\"127.0.0.1\"")
            .setting("preread_timeout", "\"500ms\""),
    );
    let to: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // From an address that is not trusted: closed before anything is read.
    let mut s = connect_from("127.0.0.9", to).await;
    s.write_all(format!("PROXY TCP4 10.1.2.3 127.0.0.1 5555 {port}\r\n").as_bytes()).await.unwrap();
    assert!(closed_without_data(&mut s).await);
    let line = gw.wait_log(&["127.0.0.9:", " 400 ", "bad proxy header"]).await;
    assert!(line.contains("not in trusted_ips"), "{line}");

    for (bad, why) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "not a PROXY protocol header"),
        (b"PROXY TCP4 10.1.2.3 127.0.0.1 99999 1\r\n", "bad addresses or ports"),
        (b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x04abcd", "carries 4 address bytes"),
    ] {
        let mut s = TcpStream::connect(to).await.unwrap();
        s.write_all(bad).await.unwrap();
        assert!(closed_without_data(&mut s).await, "{bad:?}");
        gw.wait_log(&[" 400 ", why]).await;
    }
    // A header that never ends: refused at preread_timeout.
    let mut s = TcpStream::connect(to).await.unwrap();
    s.write_all(b"PROXY TCP4 10.1.").await.unwrap();
    assert!(closed_without_data(&mut s).await);
    gw.wait_log(&[" 400 ", "no complete PROXY protocol header"]).await;
    assert_eq!(a.accepted(), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_work_with_ssl_ports_and_tls_detection() {
    let ca = TestCa::new("pp CA");
    let plain = Backend::plain("terminated").await;
    let pt = Backend::tls("passed", server_config(&ca.leaf(&["pt.test"]), None)).await;
    let (ssl_port, plain_port) = (test_support::free_port(), test_support::free_port());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: t
  url: tcp://{plain}
  routes: [{{protocols: [tls], snis: [localhost]}}]
- name: p
  url: tcp://{pt}
  routes: [{{protocols: [tls_passthrough], snis: [pt.test]}}]
"#,
        plain = plain.addr,
        pt = pt.addr
    );
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(
            format!("127.0.0.1:{ssl_port} ssl proxy_protocol, 127.0.0.1:{plain_port} proxy_protocol"),
            yaml,
        )
        .setting("trusted_ips", "\"127.0.0.0/8\""),
    );
    let header = |port: u16| format!("PROXY TCP4 10.7.7.7 127.0.0.1 7000 {port}\r\n");

    // Terminated on the ssl port: header, then the TLS handshake.
    let mut tcp = TcpStream::connect(("127.0.0.1", ssl_port)).await.unwrap();
    tcp.write_all(header(ssl_port).as_bytes()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls =
        tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(insecure_client_config()).connect(name, tcp))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(read_banner(&mut tls).await.unwrap(), "terminated");
    drop(tls);
    gw.wait_log(&["10.7.7.7:7000 ", "protocol=tls ", "sni=localhost"]).await;

    // Passed through from a plain port, recognised after the header.
    let mut tcp = TcpStream::connect(("127.0.0.1", plain_port)).await.unwrap();
    tcp.write_all(header(plain_port).as_bytes()).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("pt.test").unwrap();
    let mut tls = tokio::time::timeout(WAIT, tokio_rustls::TlsConnector::from(client_config(&ca)).connect(name, tcp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_banner(&mut tls).await.unwrap(), "passed");
    drop(tls);
    gw.wait_log(&["10.7.7.7:7000 ", "protocol=tls_passthrough "]).await;
}

/// A backend that reads a PROXY header (v1 line, or v2 by its length), then
/// optionally a TLS handshake, and answers with the header's bytes in hex.
async fn header_echo(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 16];
                if tokio::time::timeout(WAIT, s.read_exact(&mut first)).await.is_err() {
                    return;
                }
                let mut header = first.to_vec();
                if first.starts_with(b"PROXY ") {
                    while !header.ends_with(b"\r\n") && header.len() < 108 {
                        let mut b = [0u8; 1];
                        if !matches!(tokio::time::timeout(WAIT, s.read_exact(&mut b)).await, Ok(Ok(_))) {
                            return;
                        }
                        header.push(b[0]);
                    }
                } else {
                    let mut rest = vec![0u8; usize::from(u16::from_be_bytes([first[14], first[15]]))];
                    if !matches!(tokio::time::timeout(WAIT, s.read_exact(&mut rest)).await, Ok(Ok(_))) {
                        return;
                    }
                    header.extend_from_slice(&rest);
                }
                let hex: String = header.iter().map(|b| format!("{b:02x}")).collect();
                let reply = format!("{hex}\n");
                match tls {
                    None => {
                        let _ = s.write_all(reply.as_bytes()).await;
                    }
                    Some(cfg) => {
                        if let Ok(Ok(mut t)) =
                            tokio::time::timeout(WAIT, tokio_rustls::TlsAcceptor::from(cfg).accept(s)).await
                        {
                            let _ = t.write_all(reply.as_bytes()).await;
                            let _ = t.shutdown().await;
                        }
                    }
                }
            });
        }
    });
    (addr, task)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_send_v1_and_v2_headers_before_upstream_tls() {
    let ca = TestCa::new("pp out CA");
    let (plain_up, _t1) = header_echo(None).await;
    let (tls_up, _t2) = header_echo(Some(server_config(&ca.leaf(&["127.0.0.1"]), None))).await;
    let (p1, p2, p3) = (test_support::free_port(), test_support::free_port(), test_support::free_port());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: v1
  url: tcp://{plain_up}
  proxy_protocol: v1
  routes: [{{protocols: [tcp], destinations: [{{port: {p1}}}]}}]
- name: v2
  url: tcp://{plain_up}
  proxy_protocol: v2
  routes: [{{protocols: [tcp], destinations: [{{port: {p2}}}]}}]
- name: v2-tls
  url: tls://{tls_up}
  proxy_protocol: v2
  routes: [{{protocols: [tcp], destinations: [{{port: {p3}}}]}}]
"#
    );
    let _gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{p1} proxy_protocol, 127.0.0.1:{p2}, 127.0.0.1:{p3}"), yaml)
            .setting("trusted_ips", "\"127.0.0.1\""),
    );

    // In and out: the client the balancer named goes on to the upstream.
    let mut s = TcpStream::connect(("127.0.0.1", p1)).await.unwrap();
    s.write_all(format!("PROXY TCP4 10.1.2.3 127.0.0.1 5555 {p1}\r\n").as_bytes()).await.unwrap();
    let got = unhex(&read_banner(&mut s).await.unwrap());
    assert_eq!(String::from_utf8_lossy(&got), format!("PROXY TCP4 10.1.2.3 127.0.0.1 5555 {p1}\r\n"));

    // v2, written by hand here rather than by the code under test.
    let s = TcpStream::connect(("127.0.0.1", p2)).await.unwrap();
    let me = s.local_addr().unwrap();
    let mut s = s;
    let got = unhex(&read_banner(&mut s).await.unwrap());
    assert_eq!(got, v2_header(1, me, format!("127.0.0.1:{p2}").parse().unwrap()));

    // Before the upstream TLS handshake.
    let s = TcpStream::connect(("127.0.0.1", p3)).await.unwrap();
    let me = s.local_addr().unwrap();
    let mut s = s;
    let got = unhex(&read_banner(&mut s).await.unwrap());
    assert_eq!(got, v2_header(1, me, format!("127.0.0.1:{p3}").parse().unwrap()));
}
