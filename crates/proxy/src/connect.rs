//! Reaching the upstream: choose an address (the service's IP, or one picked
//! by the upstream's balancer), connect with `connect_timeout`, complete the
//! upstream TLS handshake when the service is `tls`, and on any failure move
//! to another address, up to the service's `retries` extra attempts. A failed
//! TLS handshake counts as a failed attempt, as nginx's `proxy_next_upstream`
//! does. Every attempt is recorded for the log, and a balanced attempt tells
//! the upstream how it went (passive health checks, latency).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use strait_model::ProxyProtocolOut;
use strait_plugin::{Status, Try};
use strait_upstream::{Event, InUse};
use strait_wire::proxy_protocol;
use tokio::io::AsyncWriteExt;

use crate::snapshot::{CompiledService, Destination};

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
    pub(crate) tries: Vec<Try>,
    /// The session's hold on a balanced address, released when it ends.
    pub(crate) _in_use: Option<InUse>,
}

/// No attempt succeeded.
#[derive(Debug)]
pub(crate) struct ConnectFailed {
    pub(crate) tries: Vec<Try>,
    /// 502 when attempts failed, 503 when there was nothing to attempt.
    pub(crate) status: Status,
    pub(crate) error: String,
    /// The last attempt connected but its TLS handshake failed.
    pub(crate) tls: bool,
}

/// The session's two ends as the upstream should learn them (PROXY
/// protocol out), and the client's SNI.
pub(crate) struct Ends<'a> {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) sni: Option<&'a str>,
    /// An address a plugin chose, instead of the service's destination.
    pub(crate) target: Option<SocketAddr>,
}

/// Why one attempt failed.
struct AttemptError {
    event: Event,
    error: String,
    tls: bool,
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
    svc: &CompiledService,
    ends: Ends<'_>,
    tls: Option<UpstreamTls<'_>>,
) -> Result<Connected, ConnectFailed> {
    let timeout = svc.connect_timeout;
    let client = ends.client.ip();
    // Sent first on every attempt, before any upstream TLS.
    let pp = match svc.proxy_protocol {
        ProxyProtocolOut::Off => None,
        ProxyProtocolOut::V1 => Some(proxy_protocol::encode_v1(ends.client, ends.local)),
        ProxyProtocolOut::V2 => Some(proxy_protocol::encode_v2(ends.client, ends.local, ends.sni)),
    };
    let pp = pp.as_deref();
    let attempts = u32::from(svc.retries) + 1;
    // One attempt is the rule: a default Vec would reserve four (352 bytes kept for the session's life).
    let mut tries = Vec::with_capacity(1);
    let mut last = None;
    let chosen;
    let destination = match ends.target {
        Some(addr) => {
            chosen = Destination::Addr(addr);
            &chosen
        }
        None => &svc.destination,
    };
    match destination {
        Destination::Addr(addr) => {
            for _ in 0..attempts {
                let started = SystemTime::now();
                let t0 = Instant::now();
                match attempt(*addr, None, pp, tls.as_ref(), timeout).await {
                    Ok(stream) => {
                        tries.push(Try { addr: *addr, started, took: t0.elapsed(), error: None });
                        return Ok(Connected { stream, addr: *addr, tries, _in_use: None });
                    }
                    Err(e) => {
                        tries.push(Try { addr: *addr, started, took: t0.elapsed(), error: Some(e.error.clone()) });
                        last = Some(e);
                    }
                }
            }
        }
        Destination::Balanced(b) => {
            b.ready(timeout).await;
            let mut picker = b.picker(client).map_err(|why| ConnectFailed {
                tries: Vec::new(),
                status: Status::Unavailable,
                error: why.to_string(),
                tls: false,
            })?;
            for _ in 0..attempts {
                let Some(picked) = picker.next() else {
                    break;
                };
                let (addr, started, t0) = (picked.addr(), SystemTime::now(), Instant::now());
                match attempt(addr, picked.server_name(), pp, tls.as_ref(), timeout).await {
                    Ok(stream) => {
                        let took = t0.elapsed();
                        let in_use = picked.succeeded(took);
                        tries.push(Try { addr, started, took, error: None });
                        return Ok(Connected { stream, addr, tries, _in_use: Some(in_use) });
                    }
                    Err(e) => {
                        picked.failed(e.event, &e.error, timeout);
                        tries.push(Try { addr, started, took: t0.elapsed(), error: Some(e.error.clone()) });
                        last = Some(e);
                    }
                }
            }
            if last.is_none() {
                // Every address turned unhealthy between the tables and the pick.
                return Err(ConnectFailed {
                    tries,
                    status: Status::Unavailable,
                    error: b.no_peer("no healthy address").to_string(),
                    tls: false,
                });
            }
        }
    }
    match last {
        Some(e) => Err(ConnectFailed { tries, status: Status::BadGateway, error: e.error, tls: e.tls }),
        // No attempt at all: `retries + 1` is never 0.
        None => Err(ConnectFailed {
            tries,
            status: Status::Unavailable,
            error: "no connection attempt was made".to_owned(),
            tls: false,
        }),
    }
}

/// One attempt: TCP, then TLS when the service says so.
async fn attempt(
    addr: SocketAddr,
    hostname: Option<&str>,
    proxy_header: Option<&[u8]>,
    tls: Option<&UpstreamTls<'_>>,
    timeout: Duration,
) -> Result<UpstreamStream, AttemptError> {
    let mut tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "upstream connect failed");
            return Err(AttemptError { event: Event::TcpFailure, error: e.to_string(), tls: false });
        }
        Err(_) => {
            return Err(AttemptError {
                event: Event::Timeout,
                error: format!("connect timed out after {} ms", timeout.as_millis()),
                tls: false,
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    if let Some(header) = proxy_header {
        match tokio::time::timeout(timeout, tcp.write_all(header)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(AttemptError {
                    event: Event::TcpFailure,
                    error: format!("sending the PROXY header: {e}"),
                    tls: false,
                });
            }
            Err(_) => {
                return Err(AttemptError {
                    event: Event::Timeout,
                    error: "sending the PROXY header timed out".to_owned(),
                    tls: false,
                });
            }
        }
    }
    let Some(tls) = tls else {
        return Ok(UpstreamStream::Plain(tcp));
    };
    let name = upstream_server_name(tls.client_sni, tls.host_header, hostname, addr);
    let connector = TlsConnector::from(tls.config.clone());
    let (event, error) = match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => return Ok(UpstreamStream::Tls(Box::new(s))),
        Ok(Err(e)) => (Event::TcpFailure, e.to_string()),
        Err(_) => (Event::Timeout, format!("upstream TLS handshake timed out after {} ms", timeout.as_millis())),
    };
    tracing::debug!(%addr, %error, "upstream TLS handshake failed");
    Err(AttemptError { event, error, tls: true })
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
