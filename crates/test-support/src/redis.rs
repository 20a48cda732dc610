//! A private Redis server for a test: `redis-server` on a free loopback
//! port, nothing persisted, killed when dropped. The machine's own Redis is
//! never touched (a test that sends `FLUSHALL` must not reach it).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{WAIT, free_port};

#[derive(Debug)]
pub struct RedisServer {
    pub addr: SocketAddr,
    child: Child,
}

impl RedisServer {
    /// Starts one and waits (bounded) until it answers. Panics when
    /// `redis-server` is missing: CI installs it, and the test must not pass
    /// without it.
    pub fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let server = RedisServer { addr, child };
        let deadline = Instant::now() + WAIT;
        while server.command(&["PING"]).as_deref() != Some("+PONG\r\n") {
            assert!(Instant::now() < deadline, "redis-server did not answer on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// Sends one command straight to the server (not through a gateway) and
    /// returns its raw reply.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(&resp(args)).ok()?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

/// A command in RESP: an array of bulk strings.
pub fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
