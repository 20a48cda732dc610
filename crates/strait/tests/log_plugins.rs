//! The log plugins through the real binary: file, TCP, UDP and HTTP sinks
//! receiving Kong's entries, progress entries of long sessions, and a
//! session open across a change of its sink.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::backend::{Backend, read_banner};
use test_support::gateway::{Gateway, GatewayConfig};
use test_support::{WAIT, free_port};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

mod common;
use common::*;

/// Reads one JSON line from each connection made to `listener`.
async fn next_tcp_entry(lines: &mut tokio::sync::mpsc::Receiver<Value>) -> Value {
    tokio::time::timeout(WAIT, lines.recv()).await.expect("no tcp-log entry in time").expect("tcp sink gone")
}

fn tcp_sink(listener: TcpListener) -> tokio::sync::mpsc::Receiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(s).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str(&l) {
                        let _ = tx.send(v).await;
                    }
                }
            });
        }
    });
    rx
}

/// A minimal HTTP/1.1 server: answers 200 to every request and hands over the bodies.
fn http_sink(listener: TcpListener) -> tokio::sync::mpsc::Receiver<(String, Value)> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                loop {
                    let mut head = String::new();
                    let mut len = 0usize;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let _ = tx.send((head, v)).await;
                    if r.get_mut().write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_plugins_deliver_kong_entries_to_real_sinks() {
    let backend = Backend::plain("logged").await;
    let port = free_port();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let mut tcp_lines = tcp_sink(tcp);
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = http.local_addr().unwrap().port();
    let mut http_bodies = http_sink(http);
    let down = free_port(); // nothing listens: a sink that is down
    let dir = test_support::gateway::TempDir::new();
    let (log_path, log_yaml) = file_log(dir.path());
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: logged-svc
  url: tcp://{backend}
  routes:
  - name: logged-route
    protocols: [tcp]
    destinations: [{{port: {port}}}]
plugins:
{log_yaml}- name: tcp-log
  config: {{host: 127.0.0.1, port: {tcp_port}}}
- name: udp-log
  config: {{host: 127.0.0.1, port: {udp_port}}}
- name: http-log
  config:
    http_endpoint: http://user:pw@127.0.0.1:{http_port}/logs
    headers: {{x-sink: test}}
- name: tcp-log
  instance_name: down-sink
  route: logged-route
  config: {{host: 127.0.0.1, port: {down}, timeout: 200}}
"#,
        backend = backend.addr
    );
    let _gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    // The route's tcp-log (down) replaces the global one for this route, and
    // sessions are not held up by it.
    for _ in 0..3 {
        echo_session(addr(port), b"0123456789").await;
    }
    let check = |e: &Value| {
        assert_eq!(e["session"]["status"], 200, "{e}");
        assert_eq!(e["session"]["received"], 10, "{e}");
        assert_eq!(e["session"]["sent"], 10 + "logged\n".len(), "{e}");
        assert_eq!(e["session"]["server_port"], port, "{e}");
        assert_eq!(e["upstream"]["sent"], 10, "{e}");
        assert_eq!(e["route"]["name"], "logged-route", "{e}");
        assert_eq!(e["service"]["name"], "logged-svc", "{e}");
        assert_eq!(e["client_ip"], "127.0.0.1", "{e}");
        assert_eq!(e["tries"][0]["port"], backend.addr.port(), "{e}");
        assert!(e["started_at"].as_u64().unwrap() > 1_700_000_000_000, "{e}");
        assert!(e["latencies"]["session"].is_u64() && e["latencies"]["kong"].is_u64(), "{e}");
        assert_eq!(e["close_reason"], "client closed", "{e}");
    };
    check(&wait_entry(&log_path, |_| true).await);
    let mut buf = vec![0u8; 65_536];
    let n = tokio::time::timeout(WAIT, udp.recv(&mut buf)).await.expect("no udp-log datagram").unwrap();
    check(&serde_json::from_slice(&buf[..n]).unwrap());
    let (head, body) = tokio::time::timeout(WAIT, http_bodies.recv()).await.expect("no http-log request").unwrap();
    check(&body);
    assert!(head.starts_with("POST /logs HTTP/1.1"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-sink: test"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("authorization: basic dxnlcjpwdw=="), "{head}");
    // Nothing went to the global tcp-log: the route's instance won.
    assert!(tokio::time::timeout(Duration::from_millis(300), tcp_lines.recv()).await.is_err());
    drop(tcp_lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_sessions_log_progress_entries() {
    let backend = Backend::plain("long").await;
    let port = free_port();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    let mut lines = tcp_sink(tcp);
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- url: tcp://{backend}
  routes:
  - protocols: [tcp]
    destinations: [{{port: {port}}}]
plugins:
- name: tcp-log
  config: {{host: 127.0.0.1, port: {tcp_port}, interval: 1}}
"#,
        backend = backend.addr
    );
    let _gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    read_banner(&mut s).await.unwrap();
    s.write_all(b"abc").await.unwrap();
    let mut back = [0u8; 3];
    s.read_exact(&mut back).await.unwrap();
    let e = next_tcp_entry(&mut lines).await;
    assert_eq!(e["progress"], true, "{e}");
    assert_eq!(e["session"]["received"], 3, "{e}");
    assert_eq!(e["close_reason"], Value::Null, "an open session has no close reason: {e}");
    drop(s);
    let deadline = Instant::now() + WAIT;
    loop {
        let e = next_tcp_entry(&mut lines).await;
        if e["progress"] == false {
            assert_eq!(e["session"]["received"], 3);
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_open_across_a_tcp_log_change_is_logged_where_it_began() {
    let backend = Backend::plain("long").await;
    let (port, admin) = (free_port(), free_port());
    let (before, after) =
        (TcpListener::bind("127.0.0.1:0").await.unwrap(), TcpListener::bind("127.0.0.1:0").await.unwrap());
    let (before_port, after_port) = (before.local_addr().unwrap().port(), after.local_addr().unwrap().port());
    let (mut before, mut after) = (tcp_sink(before), tcp_sink(after));
    let doc = |sink: u16| {
        format!(
            r#"_format_version: "3.0"
services:
- url: tcp://{backend}
  routes:
  - protocols: [tcp]
    destinations: [{{port: {port}}}]
plugins:
- name: tcp-log
  config: {{host: 127.0.0.1, port: {sink}, keepalive: 100}}
"#,
            backend = backend.addr
        )
    };
    let cfg = GatewayConfig::new(format!("127.0.0.1:{port}"), doc(before_port))
        .setting("admin_listen", &format!("\"127.0.0.1:{admin}\""));
    let _gw = Gateway::start(bin(), cfg);
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    read_banner(&mut s).await.unwrap();
    s.write_all(b"abc").await.unwrap();
    let mut back = [0u8; 3];
    s.read_exact(&mut back).await.unwrap();

    // The sink moves; the open session keeps the configuration it began with.
    let body = doc(after_port);
    let r =
        test_support::http::request(addr(admin), "POST", "/config", Some(("application/yaml", body.as_bytes())), &[])
            .await;
    assert_eq!(r.status, 201, "{:?}", r.json());
    echo_session(addr(port), b"new").await;
    assert_eq!(next_tcp_entry(&mut after).await["session"]["received"], 3, "a new session logs to the new sink");

    // The old sink's task has no connection left (none was ever opened) and
    // its plugin is gone: the session's last entry must still be delivered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let e = next_tcp_entry(&mut before).await;
    assert_eq!((e["session"]["received"].clone(), e["session"]["status"].clone()), (json!(3), json!(200)), "{e}");
}
