//! Reaching the upstream: resolve the service's destination, connect with
//! `connect_timeout`, and on failure move to the next address, up to the
//! service's `retries` extra attempts.
//!
//! Weighted balancing, health checks and DNS caching belong to upstreams
//! proper; until then an upstream's targets are tried in turn, starting one
//! further on for each session.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::snapshot::{Destination, Snapshot};

/// A connected upstream socket.
#[derive(Debug)]
pub struct Connected {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// The host name the address came from, if any (a candidate upstream SNI).
    pub hostname: Option<String>,
    pub tries: u32,
}

/// Every attempt failed.
#[derive(Debug)]
pub struct ConnectFailed {
    pub tries: u32,
    pub last_addr: Option<SocketAddr>,
    pub error: String,
}

async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(addrs)) => {
            let v: Vec<_> = addrs.collect();
            if v.is_empty() { Err(format!("name resolution failed for '{host}': no addresses")) } else { Ok(v) }
        }
        Ok(Err(e)) => Err(format!("name resolution failed for '{host}': {e}")),
        Err(_) => Err(format!("name resolution timed out for '{host}'")),
    }
}

/// Candidate addresses for one session, in the order they will be tried.
async fn candidates(
    snap: &Snapshot,
    service: usize,
    timeout: Duration,
) -> Result<Vec<(SocketAddr, Option<String>)>, String> {
    let rt = &snap.services[service];
    match &rt.destination {
        Destination::Addr(a) => Ok(vec![(*a, None)]),
        Destination::Name(host, port) => {
            Ok(resolve(host, *port, timeout).await?.into_iter().map(|a| (a, Some(host.clone()))).collect())
        }
        Destination::Upstream(u) => {
            let targets: Vec<_> = snap.config.targets.iter().filter(|t| t.upstream == *u && t.weight > 0).collect();
            if targets.is_empty() {
                return Err(format!("upstream '{}' has no targets", snap.config.upstreams[u.0].name));
            }
            let start = rt.next.fetch_add(1, Ordering::Relaxed) % targets.len();
            let mut out = Vec::new();
            let mut last_err = None;
            for t in targets.iter().cycle().skip(start).take(targets.len()) {
                match resolve(&t.host, t.port, timeout).await {
                    Ok(addrs) => {
                        let name = t.host.parse::<IpAddr>().is_err().then(|| t.host.clone());
                        out.extend(addrs.into_iter().map(|a| (a, name.clone())));
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            if out.is_empty() {
                return Err(last_err.unwrap_or_else(|| "no target address".into()));
            }
            Ok(out)
        }
    }
}

/// Connects to the service, trying at most `retries + 1` times.
pub async fn connect(snap: &Snapshot, service: usize) -> Result<Connected, ConnectFailed> {
    let svc = &snap.config.services[service];
    let timeout = svc.connect_timeout;
    let addrs =
        candidates(snap, service, timeout).await.map_err(|error| ConnectFailed { tries: 0, last_addr: None, error })?;
    let attempts = u32::from(svc.retries) + 1;
    let mut last = ConnectFailed { tries: 0, last_addr: None, error: String::new() };
    for (i, (addr, hostname)) in addrs.iter().cycle().take(attempts as usize).enumerate() {
        let tries = i as u32 + 1;
        let error = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(Connected { stream, addr: *addr, hostname: hostname.clone(), tries });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("connect timed out after {} ms", timeout.as_millis()),
        };
        tracing::debug!(%addr, try_ = tries, %error, "upstream connect failed");
        last = ConnectFailed { tries, last_addr: Some(*addr), error };
    }
    Err(last)
}
