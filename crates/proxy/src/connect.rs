//! Reaching the upstream: resolve the service's destination, connect with
//! `connect_timeout`, complete the upstream TLS handshake when the service is
//! `tls`, and on any failure move on, up to the service's `retries` extra
//! attempts. A failed TLS handshake counts as a failed attempt, as nginx's
//! `proxy_next_upstream` does.
//!
//! Host names are resolved lazily, when an attempt first needs them, so a
//! target whose DNS hangs delays only the attempt that uses it. Weighted
//! balancing, health checks and a DNS cache belong to upstreams proper; until
//! then an upstream's targets are tried in turn, starting one further on for
//! each session.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::snapshot::{Destination, Snapshot};

pub(crate) enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// TLS towards the upstream, for `tls` services.
pub(crate) struct UpstreamTls<'a> {
    pub(crate) config: Arc<ClientConfig>,
    /// The client's SNI when the route says `preserve_host`.
    pub(crate) client_sni: Option<&'a str>,
    pub(crate) host_header: Option<&'a str>,
}

pub(crate) struct Connected {
    pub(crate) stream: UpstreamStream,
    pub(crate) addr: SocketAddr,
    pub(crate) tries: u32,
}

/// Every attempt failed.
#[derive(Debug)]
pub(crate) struct ConnectFailed {
    pub(crate) tries: u32,
    pub(crate) last_addr: Option<SocketAddr>,
    pub(crate) error: String,
    /// The last attempt connected but its TLS handshake failed.
    pub(crate) tls: bool,
}

/// One host to try, and what resolving it gave.
struct Host<'a> {
    name: &'a str,
    port: u16,
    resolved: Option<Result<Vec<SocketAddr>, String>>,
    next: usize,
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

/// The name sent as SNI and verified, in Kong's order: the client's SNI when
/// `preserve_host`, the upstream's `host_header`, the host name the address
/// came from; an IP address (no SNI) otherwise.
pub(crate) fn upstream_server_name(
    client_sni: Option<&str>,
    host_header: Option<&str>,
    hostname: Option<&str>,
    addr: SocketAddr,
) -> ServerName<'static> {
    [client_sni, host_header, hostname]
        .into_iter()
        .flatten()
        .find_map(|n| ServerName::try_from(n.to_owned()).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// Connects to the service, trying at most `retries + 1` times.
pub(crate) async fn connect(
    snap: &Snapshot,
    service: usize,
    tls: Option<UpstreamTls<'_>>,
) -> Result<Connected, ConnectFailed> {
    let svc = &snap.config.services[service];
    let rt = &snap.services[service];
    let timeout = svc.connect_timeout;
    let mut hosts: Vec<Host<'_>> = match &rt.destination {
        Destination::Addr(a) => {
            vec![Host { name: "", port: a.port(), resolved: Some(Ok(vec![*a])), next: 0 }]
        }
        Destination::Name(name, port) => vec![Host { name, port: *port, resolved: None, next: 0 }],
        Destination::Upstream(u) => {
            let targets: Vec<_> = snap.config.targets.iter().filter(|t| t.upstream == *u && t.weight > 0).collect();
            if targets.is_empty() {
                return Err(ConnectFailed {
                    tries: 0,
                    last_addr: None,
                    error: format!("upstream '{}' has no targets", snap.config.upstreams[u.0].name),
                    tls: false,
                });
            }
            let start = rt.next.fetch_add(1, Ordering::Relaxed) % targets.len();
            targets
                .iter()
                .cycle()
                .skip(start)
                .take(targets.len())
                .map(|t| Host { name: &t.host, port: t.port, resolved: None, next: 0 })
                .collect()
        }
    };

    let attempts = u32::from(svc.retries) + 1;
    let mut last = ConnectFailed { tries: 0, last_addr: None, error: String::new(), tls: false };
    let host_count = hosts.len();
    for attempt in 0..attempts {
        let tries = attempt + 1;
        let host = &mut hosts[attempt as usize % host_count];
        if host.resolved.is_none() {
            host.resolved = Some(resolve(host.name, host.port, timeout).await);
        }
        let addr = match &host.resolved {
            Some(Ok(addrs)) => {
                let a = addrs[host.next % addrs.len()];
                host.next += 1;
                a
            }
            Some(Err(e)) => {
                last = ConnectFailed { tries, last_addr: None, error: e.clone(), tls: false };
                continue;
            }
            None => continue,
        };
        let hostname = (!host.name.is_empty() && host.name.parse::<IpAddr>().is_err()).then_some(host.name);
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%addr, tries, error = %e, "upstream connect failed");
                last = ConnectFailed { tries, last_addr: Some(addr), error: e.to_string(), tls: false };
                continue;
            }
            Err(_) => {
                last = ConnectFailed {
                    tries,
                    last_addr: Some(addr),
                    error: format!("connect timed out after {} ms", timeout.as_millis()),
                    tls: false,
                };
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &tls else {
            return Ok(Connected { stream: UpstreamStream::Plain(tcp), addr, tries });
        };
        let name = upstream_server_name(tls.client_sni, tls.host_header, hostname, addr);
        let connector = TlsConnector::from(tls.config.clone());
        let error = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Ok(Ok(s)) => return Ok(Connected { stream: UpstreamStream::Tls(Box::new(s)), addr, tries }),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("upstream TLS handshake timed out after {} ms", timeout.as_millis()),
        };
        tracing::debug!(%addr, tries, %error, "upstream TLS handshake failed");
        last = ConnectFailed { tries, last_addr: Some(addr), error, tls: true };
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_sni_order() {
        let a: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let name = |c, h, n| format!("{:?}", upstream_server_name(c, h, n, a));
        assert!(name(Some("client.test"), Some("hh.test"), Some("svc.test")).contains("client.test"));
        assert!(name(None, Some("hh.test"), Some("svc.test")).contains("hh.test"));
        assert!(name(None, None, Some("svc.test")).contains("svc.test"));
        assert!(name(None, None, None).contains("IpAddress"));
    }
}
