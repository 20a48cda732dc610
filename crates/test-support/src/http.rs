//! A minimal HTTP/1.1 client for Admin API tests: one request per
//! connection, bounded by [`crate::WAIT`]. Enough to speak to Strait
//! without pulling a full client into the test build.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends one request. `body` is `(content type, bytes)`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    headers: &[(&str, &str)],
) -> Response {
    let run = async {
        let mut s = TcpStream::connect(addr).await.expect("connect to the Admin API");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some((ct, b)) = body {
            req.push_str(&format!("Content-Type: {ct}\r\nContent-Length: {}\r\n", b.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write request");
        if let Some((_, b)) = body {
            s.write_all(b).await.expect("write body");
        }
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read response");
        parse(&raw)
    };
    tokio::time::timeout(WAIT, run).await.expect("Admin API request timed out")
}

fn parse(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response has headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = pos + 2;
        out.extend_from_slice(&b[start..(start + size).min(b.len())]);
        b = &b[(start + size + 2).min(b.len())..];
    }
    out
}

/// JSON helpers for the common cases.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, None, &[]).await
}

pub async fn send_json(addr: SocketAddr, method: &str, path: &str, body: &Value) -> Response {
    let b = body.to_string();
    request(addr, method, path, Some(("application/json", b.as_bytes())), &[]).await
}

/// A form body, as `curl --data k=v` sends it.
pub async fn send_form(addr: SocketAddr, method: &str, path: &str, form: &str) -> Response {
    request(addr, method, path, Some(("application/x-www-form-urlencoded", form.as_bytes())), &[]).await
}
