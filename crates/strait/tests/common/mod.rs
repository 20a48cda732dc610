//! Helpers the plugin tests share (`plugins.rs`, `log_plugins.rs`).
// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use test_support::WAIT;
use test_support::backend::read_banner;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strait"))
}

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The JSON entries a file-log plugin wrote so far.
pub fn entries(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Waits (bounded) until `path` holds an entry `pick` accepts.
pub async fn wait_entry(path: &Path, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = entries(path).into_iter().find(&pick) {
            return e;
        }
        assert!(Instant::now() < deadline, "no matching entry in {}:\n{:#?}", path.display(), entries(path));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Connects, reads the backend's banner, exchanges `msg`, and closes.
pub async fn echo_session(to: SocketAddr, msg: &[u8]) -> String {
    let mut s = TcpStream::connect(to).await.expect("connect to the gateway");
    let banner = read_banner(&mut s).await.expect("the backend's banner");
    s.write_all(msg).await.expect("send");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back)).await.expect("echo in time").expect("echo");
    assert_eq!(back, msg);
    banner
}

/// A file-log plugin writing to `dir`: the file, and the plugin as YAML.
pub fn file_log(dir: &Path) -> (PathBuf, String) {
    let path = dir.join("sessions.json");
    let yaml = format!("- name: file-log\n  config:\n    path: {}\n", path.display());
    (path, yaml)
}
