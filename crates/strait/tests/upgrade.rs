//! Zero-downtime operations against the real binary: `strait reload` and
//! SIGHUP, SIGUSR1 log reopening, and `strait upgrade`, whose next
//! generation takes over the listening sockets and the relaying sessions.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::bin;
use sha2::{Digest, Sha256};
use test_support::backend::{Backend, read_banner, tls_connect};
use test_support::certs::{TestCa, client_config, insecure_client_config, server_config};
use test_support::gateway::{Gateway, GatewayConfig, certificate_yaml, one_route};
use test_support::redis::{RedisServer, resp};
use test_support::{WAIT, free_port};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

fn at(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Rewrites `key = …` in the settings file (appends it when absent).
fn set(conf: &Path, key: &str, toml_value: &str) {
    let text = std::fs::read_to_string(conf).expect("read the settings file");
    let mut lines: Vec<String> =
        text.lines().filter(|l| !l.starts_with(&format!("{key} ="))).map(str::to_owned).collect();
    lines.push(format!("{key} = {toml_value}"));
    std::fs::write(conf, lines.join("\n") + "\n").expect("write the settings file");
}

/// Waits (bounded) until `f` holds.
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `msg` and reads the echo back.
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.expect("send");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back)).await.expect("echo in time").expect("echo");
    assert_eq!(back, msg);
}

/// A session through the gateway to an echo backend: banner, then one echo.
async fn session(port: u16) -> TcpStream {
    let mut s =
        tokio::time::timeout(WAIT, TcpStream::connect(at(port))).await.expect("connect in time").expect("connect");
    read_banner(&mut s).await.expect("banner");
    echo(&mut s, b"hello").await;
    s
}

fn ok(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

fn refused(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a refusal: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_a_listener_and_changes_the_log_level_without_disturbing_open_sessions() {
    let backend = Backend::plain("echo").await;
    let (a, b) = (free_port(), free_port());
    let yaml = one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{a}"), yaml)
            .setting("log_level", "\"info\"")
            .setting("drain_timeout", "\"30s\""),
    );
    let mut open = session(a).await;
    // Listener a is removed and b added; the session on a drains.
    set(&gw.conf, "stream_listen", &format!("\"127.0.0.1:{b}\""));
    let text = ok(&gw.cli(bin(), &["reload"]));
    assert!(text.contains("stream_listen"), "{text}");
    let mut on_b = session(b).await;
    until("listener a to close", || std::net::TcpStream::connect(at(a)).is_err()).await;
    echo(&mut open, b"still here").await;
    // SIGHUP re-reads the file too: the log level changes.
    assert!(!gw.stderr().contains("DEBUG"));
    set(&gw.conf, "log_level", "\"debug\"");
    gw.signal("HUP");
    until("the reload", || gw.stderr().contains("changed=log_level")).await;
    echo(&mut open, b"after the second reload").await;
    echo(&mut on_b, b"and here").await;
    // Back to a only: the same port binds again, and b's removal is
    // logged at debug level now.
    set(&gw.conf, "stream_listen", &format!("\"127.0.0.1:{a}\""));
    ok(&gw.cli(bin(), &["reload"]));
    drop(session(a).await);
    until("debug lines", || gw.stderr().contains("DEBUG")).await;
    echo(&mut on_b, b"b drains").await;
    drop((open, on_b));
    gw.wait_log(&["reason=\"client closed\"", &format!("listener=127.0.0.1:{a}")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_reload_changes_nothing_and_says_why() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut open = session(port).await;
    let good = std::fs::read_to_string(&gw.conf).unwrap();
    // A setting that cannot change in place.
    set(&gw.conf, "database", "\"sqlite\"");
    let err = refused(&gw.cli(bin(), &["reload"]));
    assert!(err.contains("database cannot change in place"), "{err}");
    // A value that does not parse (the CLI itself reads the file first).
    std::fs::write(&gw.conf, &good).unwrap();
    set(&gw.conf, "preread_timeout", "\"soon\"");
    let err = refused(&gw.cli(bin(), &["reload"]));
    assert!(err.contains("preread_timeout"), "{err}");
    // A declarative file that does not validate, and a port taken by another.
    std::fs::write(&gw.conf, &good).unwrap();
    let yml = gw.dir.path().join("kong.yml");
    let kept = std::fs::read_to_string(&yml).unwrap();
    std::fs::write(&yml, "_format_version: \"3.0\"\nservices:\n- url: nope://x\n").unwrap();
    let err = refused(&gw.cli(bin(), &["reload"]));
    assert!(err.contains("declarative_config"), "{err}");
    std::fs::write(&yml, kept).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    set(&gw.conf, "stream_listen", &format!("\"127.0.0.1:{port}, 127.0.0.1:{busy}\""));
    let err = refused(&gw.cli(bin(), &["reload"]));
    assert!(err.contains(&format!("127.0.0.1:{busy}")), "{err}");
    // Nothing changed: the listener serves, the open session relays.
    echo(&mut open, b"unchanged").await;
    drop(session(port).await);
    assert!(gw.stderr().contains("reload refused: nothing changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_access_log_after_it_was_renamed() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    drop(session(port).await);
    gw.wait_log(&["reason=\"client closed\""]).await;
    let rotated = gw.dir.path().join("access.log.1");
    std::fs::rename(&gw.access_log, &rotated).unwrap();
    gw.signal("USR1");
    until("the reopen", || gw.stderr().contains("access log reopened")).await;
    drop(session(port).await);
    gw.wait_log(&["reason=\"client closed\""]).await;
    assert_eq!(std::fs::read_to_string(&rotated).unwrap().lines().count(), 1, "the old file keeps only its line");
    assert_eq!(gw.log_lines().len(), 1, "the new file has the new line");
}

/// Sends `total` bytes in chunks with pauses while reading the echo back;
/// gives the SHA-256 of what was sent and of what came back.
async fn transfer<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(s: S, total: usize) -> ([u8; 32], [u8; 32]) {
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut sent = 0usize;
        let mut i = 0u32;
        while sent < total {
            let chunk: Vec<u8> =
                (0..(32 * 1024).min(total - sent)).map(|j| (i.wrapping_mul(31) ^ j as u32) as u8).collect();
            w.write_all(&chunk).await.expect("send");
            h.update(&chunk);
            sent += chunk.len();
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        w.shutdown().await.expect("half-close");
        <[u8; 32]>::from(h.finalize())
    });
    let mut h = Sha256::new();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < total {
        let n = tokio::time::timeout(WAIT, r.read(&mut buf)).await.expect("echo in time").expect("read");
        assert!(n > 0, "the echo ended after {got} of {total} bytes");
        h.update(&buf[..n]);
        got += n;
    }
    (writer.await.expect("writer"), h.finalize().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_passthrough_sessions_mid_transfer_finish_byte_exact_across_three_upgrades() {
    let plain = Backend::plain("echo").await;
    let ca = TestCa::new("backend CA");
    let tls_backend = Backend::tls("tls-echo", server_config(&ca.leaf(&["pass.test"]), None)).await;
    let (p, t) = (free_port(), free_port());
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n- name: plain\n  url: tcp://{}\n  routes:\n  - name: plain\n    protocols: [tcp]\n    destinations: [{{port: {p}}}]\n- name: pass\n  url: tcp://{}\n  routes:\n  - name: pass\n    protocols: [tls_passthrough]\n    snis: [pass.test]\n",
        plain.addr, tls_backend.addr
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{p}, 127.0.0.1:{t}"), yaml));
    let total = 6 << 20;
    let mut s = TcpStream::connect(at(p)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "echo");
    let plain_run = tokio::spawn(transfer(s, total));
    let mut tls = tls_connect(at(t), "pass.test", client_config(&ca)).await.unwrap();
    assert_eq!(read_banner(&mut tls).await.unwrap(), "tls-echo");
    let tls_run = tokio::spawn(transfer(tls, total));
    let mut pids = vec![gw.pid()];
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = tokio::task::block_in_place(|| gw.upgrade(bin()));
        pids.push(pid);
    }
    let (sent, back) = plain_run.await.unwrap();
    assert_eq!(sent, back, "plain: the bytes came back intact and in order");
    let (sent, back) = tls_run.await.unwrap();
    assert_eq!(sent, back, "passthrough: the bytes came back intact and in order");
    // Every earlier generation exited; the last one logs each session once.
    for old in &pids[..3] {
        until("an old generation to exit", || !Gateway::alive(*old)).await;
    }
    let line = gw.wait_log(&["route=plain", "moved=3"]).await;
    // Bytes to the client include the backend's banner ("echo\n").
    assert!(line.contains(&format!(" {} {total} ", total + 5)), "whole byte counts: {line}");
    gw.wait_log(&["route=pass", "protocol=tls_passthrough", "moved=3"]).await;
    assert_eq!(gw.log_lines().len(), 2, "each session logged once: {:?}", gw.log_lines());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_new_connections_during_an_upgrade_sees_no_refusal_and_no_reset() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (stop, done) = (stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = async {
                    let mut s = TcpStream::connect(at(port)).await?;
                    read_banner(&mut s).await?;
                    s.write_all(b"ping").await?;
                    let mut b = [0u8; 4];
                    s.read_exact(&mut b).await?;
                    std::io::Result::Ok(())
                };
                match tokio::time::timeout(WAIT, r).await {
                    Ok(Ok(())) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => failures.push(e.to_string()),
                    Err(_) => failures.push("timed out".into()),
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = done.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(failures.is_empty(), "{} failed sessions: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    assert!(done.load(Ordering::Relaxed) > before + 10, "sessions went on through the upgrade");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_session_keeps_working_across_an_upgrade() {
    let redis = RedisServer::start();
    let port = free_port();
    let yaml = one_route(redis.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut s = TcpStream::connect(at(port)).await.unwrap();
    async fn ask(s: &mut TcpStream, args: &[&str], want: &[u8]) {
        s.write_all(&resp(args)).await.unwrap();
        let mut got = vec![0u8; want.len()];
        tokio::time::timeout(WAIT, s.read_exact(&mut got)).await.expect("reply in time").unwrap();
        assert_eq!(got, want, "{args:?}");
    }
    ask(&mut s, &["PING"], b"+PONG\r\n").await;
    ask(&mut s, &["SET", "k", "before"], b"+OK\r\n").await;
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    ask(&mut s, &["GET", "k"], b"$6\r\nbefore\r\n").await;
    ask(&mut s, &["SET", "k", "after"], b"+OK\r\n").await;
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    ask(&mut s, &["GET", "k"], b"$5\r\nafter\r\n").await;
    drop(s);
    gw.wait_log(&["moved=2", "reason=\"client closed\""]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_terminated_session_keeps_working_until_it_ends() {
    let backend = Backend::plain("echo").await;
    let ca = TestCa::new("gateway CA");
    let leaf = ca.leaf(&["term.test"]);
    let port = free_port();
    let yaml = format!(
        "_format_version: \"3.0\"\ncertificates:\n{}services:\n- url: tcp://{}\n  routes:\n  - protocols: [tls]\n    snis: [term.test]\n",
        certificate_yaml(&leaf, &["term.test"]),
        backend.addr
    );
    let gw = Gateway::start(
        bin(),
        GatewayConfig::new(format!("127.0.0.1:{port} ssl"), yaml).setting("drain_timeout", "\"30s\""),
    );
    let old = gw.pid();
    let mut s = tls_connect(at(port), "term.test", client_config(&ca)).await.unwrap();
    assert_eq!(read_banner(&mut s).await.unwrap(), "echo");
    echo(&mut s, b"before").await;
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    // It stays with the old generation, which serves it until it ends.
    echo(&mut s, b"during the drain").await;
    let mut fresh = tls_connect(at(port), "term.test", insecure_client_config()).await.unwrap();
    assert_eq!(read_banner(&mut fresh).await.unwrap(), "echo");
    assert!(Gateway::alive(old), "the old generation waits for its TLS session");
    drop((s, fresh));
    until("the old generation to exit", || !Gateway::alive(old)).await;
    let line = gw.wait_log(&["protocol=tls", "reason=\"client closed\""]).await;
    assert!(!line.contains("moved="), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_new_generation_leaves_the_old_one_serving() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut open = session(port).await;
    // Settings the new generation cannot start with: its declarative file is invalid.
    let bad_yml = gw.dir.write("bad.yml", "_format_version: \"3.0\"\nroutes:\n- protocols: [nope]\n");
    let bad = gw.dir.write(
        "bad.toml",
        &std::fs::read_to_string(&gw.conf)
            .unwrap()
            .lines()
            .map(|l| {
                if l.starts_with("declarative_config") {
                    format!("declarative_config = {bad_yml:?}")
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let out = std::process::Command::new(bin()).args(["upgrade", "-c"]).arg(&bad).output().unwrap();
    let err = refused(&out);
    assert!(err.contains("declarative_config"), "the reason reaches the operator: {err}");
    // A binary that dies at once.
    let out = gw.cli(bin(), &["upgrade", "--binary", "/bin/false"]);
    let err = refused(&out);
    assert!(err.contains("exited before it was ready"), "{err}");
    // One upgrade at a time: a second while a slow one starts is refused.
    let slow = gw.dir.write("slow.sh", "#!/bin/sh\nsleep 2\n");
    std::fs::set_permissions(&slow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let first = {
        let (conf, slow) = (gw.conf.clone(), slow.clone());
        std::thread::spawn(move || {
            std::process::Command::new(bin()).args(["upgrade", "-c"]).arg(conf).arg("--binary").arg(slow).output()
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let err = refused(&gw.cli(bin(), &["upgrade"]));
    assert!(err.contains("already in progress"), "{err}");
    assert!(!first.join().unwrap().unwrap().status.success());
    // The old generation served throughout, and still does.
    echo(&mut open, b"still served").await;
    drop(session(port).await);
    assert!(gw.stderr().contains("upgrade failed: this generation keeps serving"));
    // And a good upgrade after all that goes through.
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    echo(&mut open, b"moved").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activation_serves_the_passed_socket_and_an_upgrade_keeps_it() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    // systemd's launcher binds the port and starts strait with it as fd 3.
    let dir = test_support::gateway::TempDir::new();
    let launcher = dir.write(
        "activate.sh",
        &format!("#!/bin/sh\nexec systemd-socket-activate -l 127.0.0.1:{port} {} \"$@\"\n", bin().display()),
    );
    std::fs::set_permissions(&launcher, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The launcher starts strait at the first connection, which strait
    // then serves from the socket's queue.
    let first = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let deadline = Instant::now() + WAIT;
        let mut s = loop {
            match std::net::TcpStream::connect(at(port)) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("the launcher never listened: {e}"),
            }
        };
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"first").unwrap();
        let mut got = vec![0u8; 10];
        s.read_exact(&mut got).unwrap();
        got
    });
    let gw = Gateway::start(&launcher, GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    assert_eq!(first.join().unwrap(), b"echo\nfirst", "the connection that started it is served");
    assert!(gw.stderr().contains("listening socket from systemd"), "{}", gw.stderr());
    let mut open = session(port).await;
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    drop(session(port).await);
    echo(&mut open, b"moved").await;
}

/// A UDP backend that answers each datagram with the address it came from
/// (the gateway's upstream socket, as the backend sees it).
async fn udp_peer_echo() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind the UDP backend");
    let addr = s.local_addr().expect("its address");
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let reply = format!("{from} {}", String::from_utf8_lossy(&buf[..n]));
            let _ = s.send_to(reply.as_bytes(), from).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_keep_their_upstream_socket_across_two_upgrades() {
    let (backend, _task) = udp_peer_echo().await;
    let port = free_port();
    let yaml = format!(
        "_format_version: \"3.0\"\nservices:\n- name: dns\n  url: udp://{backend}\n  routes: [{{name: dns, protocols: [udp], sources: [{{ip: 127.0.0.1}}]}}]\n"
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port} udp"), yaml));
    let to = at(port);
    let clients = [
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    ];
    async fn ask(c: &tokio::net::UdpSocket, to: SocketAddr, msg: &str) -> String {
        c.send_to(msg.as_bytes(), to).await.unwrap();
        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(WAIT, c.recv_from(&mut buf)).await.expect("a reply in time").unwrap();
        assert_eq!(from, to, "the reply comes from the listener's address");
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (peer, echoed) = reply.split_once(' ').expect("peer and message");
        assert_eq!(echoed, msg, "a reply reached the wrong client");
        peer.to_owned()
    }
    let mut peers = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        peers.push(ask(c, to, &format!("{i} before")).await);
    }
    assert_ne!(peers[0], peers[1], "each client has its own upstream socket");
    for round in 0..2 {
        tokio::task::block_in_place(|| gw.upgrade(bin()));
        for (i, c) in clients.iter().enumerate() {
            // The same upstream socket: the backend sees the same peer.
            assert_eq!(ask(c, to, &format!("{i} after {round}")).await, peers[i], "client {i}, upgrade {round}");
        }
    }
    // UDP sessions end at shutdown: each is logged once, by the last generation.
    gw.signal("TERM");
    let line = gw.wait_log(&["protocol=udp", "moved=2", "datagrams=3/3"]).await;
    assert!(line.contains("route=dns"), "{line}");
    let lines: Vec<String> = gw.log_lines().into_iter().filter(|l| l.contains("protocol=udp")).collect();
    assert_eq!(lines.len(), 2, "each UDP session logged once: {lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_log_plugins_follow_the_sessions_across_an_upgrade() {
    let backend = Backend::plain("lim").await;
    let (p_lim, p_rate) = (free_port(), free_port());
    let dir = test_support::gateway::TempDir::new();
    let file = dir.path().join("sessions.log");
    let yaml = format!(
        r#"_format_version: "3.0"
services:
- name: s
  url: tcp://{backend}
  routes:
  - name: limited
    protocols: [tcp]
    destinations: [{{port: {p_lim}}}]
    plugins:
    - name: connection-limit
      config: {{max_sessions: 1, limit_by: route}}
    - name: file-log
      config: {{path: "{file}"}}
  - name: rated
    protocols: [tcp]
    destinations: [{{port: {p_rate}}}]
    plugins:
    - name: connection-rate-limit
      config: {{rate: 2, window: minute, limit_by: route}}
"#,
        backend = backend.addr,
        file = file.display()
    );
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{p_lim}, 127.0.0.1:{p_rate}"), yaml));
    async fn refused_at(port: u16) -> bool {
        let mut s = TcpStream::connect(at(port)).await.unwrap();
        let mut b = [0u8; 16];
        matches!(tokio::time::timeout(WAIT, s.read(&mut b)).await.expect("an answer in time"), Ok(0) | Err(_))
    }
    // One session holds the only place; two of the minute's two are used.
    let mut held = session(p_lim).await;
    assert!(refused_at(p_lim).await, "the limit holds before the upgrade");
    for _ in 0..2 {
        drop(session(p_rate).await);
    }
    tokio::task::block_in_place(|| gw.upgrade(bin()));
    // The moved session still holds its place in the new generation, and the
    // window goes on from the old generation's.
    assert!(refused_at(p_lim).await, "the moved session still counts against connection-limit");
    assert!(refused_at(p_rate).await, "the rate window was carried over");
    echo(&mut held, b"still here").await;
    drop(held);
    // Its end gives the place back, in the new generation.
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        let mut s = TcpStream::connect(at(p_lim)).await.unwrap();
        if read_banner(&mut s).await.is_ok() {
            break s;
        }
        assert!(Instant::now() < deadline, "the place was never given back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    echo(&mut again, b"next").await;
    // file-log saw the moved session end, once, with its whole counts.
    let mut entry = serde_json::Value::Null;
    until("file-log's entry for the moved session", || {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        entry = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["session"]["moves"] == 1)
            .unwrap_or_default();
        !entry.is_null()
    })
    .await;
    // "lim\n" banner, then the two echoes.
    assert_eq!(entry["session"]["sent"], 4 + 5 + 10, "{entry}");
    assert_eq!(entry["session"]["received"], 5 + 10, "{entry}");
    assert_eq!(entry["route"]["name"], "limited", "{entry}");
    let text = std::fs::read_to_string(&file).unwrap();
    let moved = text.lines().filter(|l| l.contains("\"moves\"")).count();
    assert_eq!(moved, 1, "logged once: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_generation_that_dies_mid_hand_off_leaves_its_sessions_with_the_old_one() {
    let backend = Backend::plain("echo").await;
    let port = free_port();
    let yaml = one_route(backend.addr, &[], &["protocols: [tcp]", "sources: [{ip: 127.0.0.0/8}]"]);
    let gw = Gateway::start(bin(), GatewayConfig::new(format!("127.0.0.1:{port}"), yaml));
    let mut s = session(port).await;
    // It says it is ready, then dies on the first session, unanswered.
    let dying = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dying_generation.py");
    let out = gw.cli(bin(), &["upgrade", "--binary", &dying.to_string_lossy()]);
    ok(&out);
    // The session goes on in the old generation: no byte lost, none twice.
    echo(&mut s, b"after the next generation died").await;
    echo(&mut s, b"and again").await;
    assert!(Gateway::alive(gw.pid()), "the old generation keeps its session");
    drop(s);
    let line = gw.wait_log(&["reason=\"client closed\""]).await;
    assert!(!line.contains("moved="), "it never moved: {line}");
    assert!(line.contains(" 49 44 "), "whole byte counts (banner and three echoes): {line}");
    assert!(gw.stderr().contains("stay here"), "the old generation says what stayed: {}", gw.stderr());
    assert_eq!(gw.log_lines().len(), 1, "logged once: {:?}", gw.log_lines());
}
