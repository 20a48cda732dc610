//! The life of one session, in order: classify (TLS or not, and the SNI),
//! route, [preread plugins], terminate TLS if the route says so, connect to
//! the upstream (with TLS if the service says so), relay, log.
//!
//! Every step that waits on the client or the upstream has a deadline, and
//! every way a session can end maps to a Kong stream status and a close
//! reason in the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::ServerName;
use strait_model::{Protocol, RouteIdx};
use strait_router::{ConnKind, Facts};
use strait_tls::{ClientHello, MAX_HELLO_LEN, Peek};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::access_log::{CloseReason, SessionRecord};
use crate::connect::connect;
use crate::relay::{RelayEnd, Side, relay};
use crate::rewind::Rewind;
use crate::snapshot::Snapshot;
use crate::{ListenerInfo, Shared};

/// Bytes buffered while looking for a ClientHello, at most: enough for the
/// largest accepted hello split into several records.
const MAX_PEEK: usize = 2 * MAX_HELLO_LEN;

/// How a session failed before its relay started.
#[derive(Debug)]
struct Fail {
    status: u16,
    reason: CloseReason,
    detail: Option<String>,
}

impl Fail {
    fn new(status: u16, reason: CloseReason, detail: impl Into<Option<String>>) -> Fail {
        Fail { status, reason, detail: detail.into() }
    }
}

/// What the first client bytes turned out to be.
enum Classified {
    Hello(ClientHello),
    NotTls,
    /// Nothing arrived before the first-byte deadline.
    Silent,
    /// The client closed its side without sending anything.
    Eof,
}

enum ClientStream {
    Plain(Rewind<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<Rewind<TcpStream>>>),
}

enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

struct Ready {
    client: ClientStream,
    upstream: UpstreamStream,
    idle: Duration,
}

/// Runs one session to its end and writes its log line.
pub(crate) async fn serve(
    stream: TcpStream,
    client: SocketAddr,
    local: SocketAddr,
    listener: Arc<ListenerInfo>,
    shared: Arc<Shared>,
    _alive: mpsc::Sender<()>,
) {
    let started = SystemTime::now();
    let t0 = Instant::now();
    // One snapshot for the whole session: later configuration changes do not touch it.
    let snap = shared.snapshot.load_full();
    let mut rec = SessionRecord {
        client,
        listener: listener.label.clone(),
        started,
        duration: Duration::ZERO,
        protocol: "tcp",
        status: 200,
        route: None,
        service: None,
        upstream: None,
        sni: None,
        tries: 0,
        bytes_sent: 0,
        bytes_received: 0,
        reason: CloseReason::ClientClosed,
        detail: None,
    };
    let mut force = shared.force_close.clone();

    let prepared = tokio::select! {
        biased;
        _ = force.wait_for(|v| *v) => Err(Fail::new(503, CloseReason::Shutdown, None)),
        r = prepare(&mut rec, stream, local, &listener, &shared, &snap) => r,
    };
    match prepared {
        Err(fail) => {
            rec.status = fail.status;
            rec.reason = fail.reason;
            rec.detail = fail.detail;
        }
        Ok(mut ready) => {
            use ClientStream as C;
            use UpstreamStream as U;
            let idle = ready.idle;
            let out = match (&mut ready.client, &mut ready.upstream) {
                (C::Plain(c), U::Plain(u)) => relay(c, u, idle, &mut force).await,
                (C::Plain(c), U::Tls(u)) => relay(c, u.as_mut(), idle, &mut force).await,
                (C::Tls(c), U::Plain(u)) => relay(c.as_mut(), u, idle, &mut force).await,
                (C::Tls(c), U::Tls(u)) => relay(c.as_mut(), u.as_mut(), idle, &mut force).await,
            };
            rec.bytes_received = out.client_to_upstream;
            rec.bytes_sent = out.upstream_to_client;
            rec.reason = match out.end {
                RelayEnd::Closed { first: Side::Client } => CloseReason::ClientClosed,
                RelayEnd::Closed { first: Side::Upstream } => CloseReason::UpstreamClosed,
                RelayEnd::IdleTimeout => CloseReason::IdleTimeout,
                RelayEnd::Shutdown => CloseReason::Shutdown,
                RelayEnd::Error { side, error } => {
                    rec.detail = Some(error.to_string());
                    match side {
                        Side::Client => CloseReason::ClientError,
                        Side::Upstream => CloseReason::UpstreamError,
                    }
                }
            };
        }
    }
    rec.duration = t0.elapsed();
    if rec.status >= 400 {
        tracing::debug!(client = %rec.client, status = rec.status, reason = rec.reason.as_str(), detail = ?rec.detail, "session refused");
    }
    shared.log.log(&rec);
}

/// Everything before the relay: classify, route, TLS, connect.
async fn prepare(
    rec: &mut SessionRecord,
    mut stream: TcpStream,
    local: SocketAddr,
    listener: &ListenerInfo,
    shared: &Shared,
    snap: &Snapshot,
) -> Result<Ready, Fail> {
    let client = rec.client;
    let mut buf = Vec::new();

    // Classify. Wait for client bytes only when TLS could matter, so that
    // protocols where the server speaks first are never stalled.
    let classified = if listener.ssl {
        read_first(&mut stream, &mut buf, shared.preread_timeout, shared.preread_timeout).await?
    } else if snap.router.tls_candidate(client, local) {
        let plain_fallback = snap.router.find(ConnKind::Plain, &Facts { src: client, dst: local, sni: None }).is_some();
        let first_byte = if plain_fallback { shared.tls_detect_timeout } else { shared.preread_timeout };
        read_first(&mut stream, &mut buf, first_byte, shared.preread_timeout).await?
    } else {
        Classified::NotTls
    };
    let silent = matches!(classified, Classified::Silent);
    let (kind, hello) = match (listener.ssl, classified) {
        (true, Classified::Hello(h)) => (ConnKind::TlsOnSsl, Some(h)),
        (true, Classified::NotTls) => {
            return Err(Fail::new(400, CloseReason::NotTls, "an ssl listener accepts only TLS".to_owned()));
        }
        (true, Classified::Silent) => return Err(Fail::new(400, CloseReason::PrereadTimeout, None)),
        (true, Classified::Eof) => return Err(Fail::new(400, CloseReason::ClientClosed, None)),
        (false, Classified::Hello(h)) => (ConnKind::TlsOnPlain, Some(h)),
        (false, _) => (ConnKind::Plain, None),
    };
    rec.sni = hello.as_ref().and_then(|h| h.sni.clone());

    // Route.
    let facts = Facts { src: client, dst: local, sni: rec.sni.as_deref() };
    let Some(RouteIdx(ri)) = snap.router.find(kind, &facts) else {
        if kind == ConnKind::Plain && snap.router.tls_candidate(client, local) {
            // Only TLS routes could match and the client did not speak TLS.
            if silent {
                return Err(Fail::new(
                    400,
                    CloseReason::PrereadTimeout,
                    "no ClientHello before preread_timeout".to_owned(),
                ));
            }
            if !buf.is_empty() {
                return Err(Fail::new(
                    400,
                    CloseReason::NotTls,
                    "only TLS routes match and the client did not send a ClientHello".to_owned(),
                ));
            }
        }
        return Err(Fail::new(500, CloseReason::NoRoute, "no Route found with those values".to_owned()));
    };
    let route = &snap.config.routes[ri];
    rec.route = Some(route.label());
    let Some(si) = route.service.map(|s| s.0) else {
        return Err(Fail::new(503, CloseReason::NoService, "no Service found with those values".to_owned()));
    };
    let svc = &snap.config.services[si];
    rec.service = Some(svc.label());
    if !svc.protocol.is_stream() || svc.protocol == Protocol::Udp {
        return Err(Fail::new(
            503,
            CloseReason::NoService,
            format!("service with protocol '{}' cannot be used with a TCP session", svc.protocol),
        ));
    }

    let passthrough = kind != ConnKind::Plain && route.protocols.contains(Protocol::TlsPassthrough);
    let terminate = kind != ConnKind::Plain && !passthrough && route.protocols.contains(Protocol::Tls);
    rec.protocol = if passthrough {
        "tls_passthrough"
    } else if terminate {
        "tls"
    } else {
        "tcp"
    };

    // The preread phase (plugins) will run here: after routing, before any
    // TLS work or upstream connection.

    let client_stream = if terminate {
        let acceptor = TlsAcceptor::from(snap.tls_server.clone());
        match tokio::time::timeout(shared.preread_timeout, acceptor.accept(Rewind::new(buf, stream))).await {
            Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
            Ok(Err(e)) => return Err(Fail::new(400, CloseReason::TlsHandshakeFailed, e.to_string())),
            Err(_) => {
                return Err(Fail::new(
                    400,
                    CloseReason::TlsHandshakeFailed,
                    "handshake did not finish before preread_timeout".to_owned(),
                ));
            }
        }
    } else {
        ClientStream::Plain(Rewind::new(buf, stream))
    };

    let connected = connect(snap, si).await.map_err(|f| {
        rec.tries = f.tries;
        rec.upstream = f.last_addr;
        Fail::new(502, CloseReason::ConnectFailed, f.error)
    })?;
    rec.tries = connected.tries;
    rec.upstream = Some(connected.addr);

    let upstream = match (&snap.services[si].tls, passthrough) {
        (Some(cfg), false) => {
            let rt = &snap.services[si];
            let name = upstream_server_name(
                route.preserve_host.then_some(rec.sni.as_deref()).flatten(),
                rt.host_header.as_deref(),
                connected.hostname.as_deref(),
                connected.addr,
            );
            let connector = TlsConnector::from(cfg.clone());
            match tokio::time::timeout(svc.connect_timeout, connector.connect(name, connected.stream)).await {
                Ok(Ok(tls)) => UpstreamStream::Tls(Box::new(tls)),
                Ok(Err(e)) => return Err(Fail::new(502, CloseReason::UpstreamTlsFailed, e.to_string())),
                Err(_) => {
                    return Err(Fail::new(
                        502,
                        CloseReason::UpstreamTlsFailed,
                        "upstream handshake did not finish before connect_timeout".to_owned(),
                    ));
                }
            }
        }
        _ => UpstreamStream::Plain(connected.stream),
    };

    Ok(Ready { client: client_stream, upstream, idle: svc.idle_timeout() })
}

/// The name sent as SNI and verified, in Kong's order: the client's SNI when
/// `preserve_host`, the upstream's `host_header`, the host name the address
/// came from; an IP address (no SNI) otherwise.
fn upstream_server_name(
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

/// Reads client bytes until they show a ClientHello, show something else,
/// or a deadline passes. `first` bounds the wait for the first byte, `total`
/// the whole read.
async fn read_first(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    first: Duration,
    total: Duration,
) -> Result<Classified, Fail> {
    let start = Instant::now();
    loop {
        match strait_tls::peek(buf) {
            Peek::NeedMore => {}
            Peek::NotTls => return Ok(Classified::NotTls),
            Peek::Hello(h) => return Ok(Classified::Hello(h)),
            Peek::Invalid(why) => return Err(Fail::new(400, CloseReason::BadClientHello, why.to_owned())),
        }
        if buf.len() >= MAX_PEEK {
            return Err(Fail::new(400, CloseReason::BadClientHello, "ClientHello too large".to_owned()));
        }
        let deadline = start + if buf.is_empty() { first } else { total };
        buf.reserve(4096.min(MAX_PEEK - buf.len()));
        let room = (MAX_PEEK - buf.len()).min(4096);
        let mut limited = (&mut *stream).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(buf)).await {
            Ok(Ok(0)) if buf.is_empty() => return Ok(Classified::Eof),
            Ok(Ok(0)) => {
                return Err(Fail::new(
                    400,
                    CloseReason::BadClientHello,
                    "client closed in the middle of its ClientHello".to_owned(),
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Fail::new(400, CloseReason::ClientError, e.to_string())),
            Err(_) if buf.is_empty() => return Ok(Classified::Silent),
            Err(_) => {
                return Err(Fail::new(
                    400,
                    CloseReason::PrereadTimeout,
                    "incomplete ClientHello at preread_timeout".to_owned(),
                ));
            }
        }
    }
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
