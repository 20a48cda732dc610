//! The life of one session, in order: classify (TLS or not, and the SNI),
//! route, terminate TLS if the route says so (after the `certificate` plugin
//! phase), run the `preread` plugins, connect to the upstream (with TLS if
//! the service says so), relay, then log (access log and `log` plugins).
//!
//! Every step that waits on the client or the upstream has a deadline, and
//! every way a session can end maps to a Kong stream status and a close
//! reason in the access log.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use strait_model::{Protocol, RouteIdx};
use strait_router::{ConnKind, Facts, PrereadNeed};
use strait_tls::{ClientHello, MAX_HELLO_LEN, Peek};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::access_log::{CloseReason, Closing, OpenRecord, Proxied, SessionRecord};
use crate::connect::{Ends, UpstreamStream, UpstreamTls, connect};
use crate::plugin::{Chain, PhaseOutcome, Session, TlsInfo};
use crate::proxy_protocol::{self, Parsed};
use crate::relay::{RelayEnd, Report, Side, relay, relay_plain};
use crate::rewind::Rewind;
use crate::snapshot::Snapshot;
use crate::upstream::InUse;
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
    /// Starts like TLS but is not a usable ClientHello.
    Invalid(&'static str),
    /// Not read at all: the bytes could not change the route.
    Skipped,
    /// Nothing arrived before the first-byte deadline.
    Silent,
    /// The client closed its side without sending anything.
    Eof,
}

enum ClientStream {
    Plain(Rewind<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<Rewind<TcpStream>>>),
}

/// The streams of a session about to relay. Kept whole through the relay,
/// which borrows them, so it holds nothing else (the idle timeout travels
/// beside it, into the relay).
pub(crate) struct Ready {
    client: ClientStream,
    upstream: UpstreamStream,
    /// Counts this session against its upstream address until it ends.
    _in_use: Option<InUse>,
}

/// The plugins running for a session, with its state as they see it.
pub(crate) struct Plugged {
    chain: Arc<Chain>,
    s: Session,
}

/// A connection just accepted, with what its session needs.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) listener: Arc<ListenerInfo>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) alive: mpsc::Sender<()>,
}

/// Runs one session to its end and writes its log line.
///
/// This future is the state every open session keeps (see `bench/README.md`,
/// idle memory). It receives its setup already boxed (see [`setup`]): what
/// only the setup needs (the accepted connection, the peek buffer,
/// handshakes, connect attempts) is freed when the relay starts instead of
/// staying in the task for the session's whole life, and nothing the relay
/// does not need is kept across it.
pub(crate) async fn serve<F: Future<Output = SetUp>>(setup: Pin<Box<F>>) {
    let SetUp { t0, shared, _alive, mut rec, mut plugged, mut ready, idle } = setup.await;
    if let Some(streams) = ready.as_mut() {
        rec.connected_after = Some(t0.elapsed());
        // Through the relay the session keeps only what its setup found.
        let open = OpenRecord::new(rec);
        use ClientStream as C;
        use UpstreamStream as U;
        // Log plugins that report long sessions while they run.
        let every = plugged.as_ref().and_then(|p| p.chain.progress_every);
        let report = every.map(|every| {
            let (plugged, open) = (&mut plugged, &open);
            let call = Box::new(move |up: u64, down: u64| {
                if let Some(p) = plugged.as_mut() {
                    let now = open.so_far(Closing {
                        duration: t0.elapsed(),
                        bytes_sent: down,
                        bytes_received: up,
                        reason: CloseReason::ClientClosed,
                        detail: None,
                    });
                    p.s.record = Some(now);
                    p.chain.progress(&mut p.s, t0.elapsed());
                    p.s.record = None;
                }
            });
            Report { every, call }
        });
        let force = &shared.force_close;
        let out = match (&mut streams.client, &mut streams.upstream) {
            (C::Plain(c), U::Plain(u)) => relay_plain(c, u, idle, force, report).await,
            (C::Plain(c), U::Tls(u)) => relay(c, u.as_mut(), idle, force, report).await,
            (C::Tls(c), U::Plain(u)) => relay(c.as_mut(), u, idle, force, report).await,
            (C::Tls(c), U::Tls(u)) => relay(c.as_mut(), u.as_mut(), idle, force, report).await,
        };
        // The sockets close before the log phase, as the session ends.
        drop(ready.take());
        let mut detail = None;
        let reason = match out.end {
            RelayEnd::Closed { first: Side::Client } => CloseReason::ClientClosed,
            RelayEnd::Closed { first: Side::Upstream } => CloseReason::UpstreamClosed,
            RelayEnd::IdleTimeout => CloseReason::IdleTimeout,
            RelayEnd::Shutdown => CloseReason::Shutdown,
            RelayEnd::Error { side, error } => {
                detail = Some(error.to_string());
                match side {
                    Side::Client => CloseReason::ClientError,
                    Side::Upstream => CloseReason::UpstreamError,
                }
            }
        };
        rec = open.close(Closing {
            duration: t0.elapsed(),
            bytes_sent: out.upstream_to_client,
            bytes_received: out.client_to_upstream,
            reason,
            detail,
        });
    } else {
        rec.duration = t0.elapsed();
    }
    if rec.status >= 400 {
        tracing::debug!(client = %rec.client, status = rec.status, reason = rec.reason.as_str(), detail = ?rec.detail, "session refused");
    }
    let rec = match plugged {
        Some(mut p) => {
            p.s.record = Some(rec);
            p.chain.log(&mut p.s);
            p.s.record.take()
        }
        None => Some(rec),
    };
    if let Some(rec) = &rec {
        shared.log.log(rec);
    }
    shared.stats.session_ended();
}

/// What a session keeps once its setup is over.
pub(crate) struct SetUp {
    /// When it began.
    t0: Instant,
    shared: Arc<Shared>,
    /// Its place among the open sessions.
    _alive: mpsc::Sender<()>,
    rec: SessionRecord,
    plugged: Option<Box<Plugged>>,
    /// The streams to relay: `None` when the session ended before its relay.
    ready: Option<Ready>,
    /// The service's idle timeout, for the relay.
    idle: Duration,
}

/// Everything before the relay, with the way out on a forced close. The
/// accept loop boxes this future and hands it to [`serve`]: one allocation
/// per session holds the connection and all of the setup's state.
pub(crate) async fn setup(conn: Accepted) -> SetUp {
    let t0 = Instant::now();
    let Accepted { stream, client, local, listener, shared, alive } = conn;
    shared.stats.session_started();
    // One snapshot for the whole setup; later configuration changes do not touch this session.
    let snap = shared.snapshot.load_full();
    let mut rec = SessionRecord::new(client, listener.label.clone(), "tcp", CloseReason::ClientClosed);
    // Boxed: a session without plugins keeps one word for them.
    let mut plugged: Option<Box<Plugged>> = None;
    let prepared = tokio::select! {
        biased;
        _ = shared.force_close.closed() => Err(Fail::new(503, CloseReason::Shutdown, None)),
        r = prepare(&mut rec, &mut plugged, stream, local, &listener, &shared, &snap) => r,
    };
    let (ready, idle) = match prepared {
        Ok((ready, idle)) => (Some(ready), idle),
        Err(fail) => {
            rec.status = fail.status;
            rec.reason = fail.reason;
            rec.detail = fail.detail;
            (None, Duration::ZERO)
        }
    };
    // The log phase runs the route's plugins, or the global ones for a
    // session that never reached a route: decided now, so that the relay
    // keeps nothing for it.
    if plugged.is_none() {
        plugged = snap.chain(None).map(|chain| {
            let s = Session::new(snap.clone(), rec.client, local, listener.label.clone());
            Box::new(Plugged { chain: chain.clone(), s })
        });
    }
    SetUp { t0, shared, _alive: alive, rec, plugged, ready, idle }
}

/// Everything before the relay: classify, route, TLS, connect. Gives the
/// streams and the service's idle timeout.
async fn prepare(
    rec: &mut SessionRecord,
    plugged: &mut Option<Box<Plugged>>,
    mut stream: TcpStream,
    local: SocketAddr,
    listener: &ListenerInfo,
    shared: &Shared,
    snap: &Arc<Snapshot>,
) -> Result<(Ready, Duration), Fail> {
    let mut buf = Vec::new();
    // Behind a load balancer: the header's addresses are the session's.
    let (client, local) = if listener.proxy_protocol {
        read_proxy_header(rec, &mut stream, &mut buf, local, shared).await?
    } else {
        (rec.client, local)
    };

    // Classify. Wait for client bytes only when they could change the route,
    // so that protocols where the server speaks first are never stalled.
    let need = if listener.ssl { PrereadNeed::TlsOnly } else { snap.router.preread_need(client, local) };
    let classified = match need {
        PrereadNeed::None => Classified::Skipped,
        PrereadNeed::PlainFallback => {
            read_first(&mut stream, &mut buf, shared.tls_detect_timeout, shared.preread_timeout).await?
        }
        PrereadNeed::TlsOnly => {
            read_first(&mut stream, &mut buf, shared.preread_timeout, shared.preread_timeout).await?
        }
    };
    let (kind, hello) = match (listener.ssl, classified) {
        (true, Classified::Hello(h)) => (ConnKind::TlsOnSsl, Some(h)),
        (true, Classified::Invalid(why)) | (false, Classified::Invalid(why)) if need == PrereadNeed::TlsOnly => {
            return Err(Fail::new(400, CloseReason::BadClientHello, why.to_owned()));
        }
        (true, Classified::NotTls) => {
            return Err(Fail::new(400, CloseReason::NotTls, "an ssl listener accepts only TLS".to_owned()));
        }
        (true, Classified::Silent) => return Err(Fail::new(400, CloseReason::PrereadTimeout, None)),
        (true, _) => return Err(Fail::new(400, CloseReason::ClientClosed, None)),
        (false, Classified::Hello(h)) => (ConnKind::TlsOnPlain, Some(h)),
        // Anything else on a plain port, including bytes that only look like
        // TLS, goes to the plain route if there is one.
        (false, _) => (ConnKind::Plain, None),
    };
    rec.sni = hello.as_ref().and_then(|h| h.sni.clone());

    // Route.
    let facts = Facts { src: client, dst: local, sni: rec.sni.as_deref() };
    let Some(RouteIdx(ri)) = snap.router.find(kind, &facts) else {
        snap.metrics.router_miss();
        let detail = match (kind, need) {
            (ConnKind::Plain, PrereadNeed::TlsOnly) if buf.is_empty() => {
                "only TLS routes match and no ClientHello arrived"
            }
            (ConnKind::Plain, PrereadNeed::TlsOnly) => "only TLS routes match and the client did not speak TLS",
            _ => "no Route found with those values",
        };
        return Err(Fail::new(500, CloseReason::NoRoute, detail.to_owned()));
    };
    let route = &snap.config.routes[ri];
    rec.route = Some(snap.route_labels[ri].clone());
    let passthrough = kind != ConnKind::Plain && route.protocols.contains(Protocol::TlsPassthrough);
    let terminate = kind != ConnKind::Plain && !passthrough && route.protocols.contains(Protocol::Tls);
    rec.protocol = if passthrough {
        "tls_passthrough"
    } else if terminate {
        "tls"
    } else {
        "tcp"
    };

    // Plugins see the session from here on (and log it whatever happens).
    if let Some(chain) = snap.chain(Some(ri)) {
        let mut s = Session::new(Arc::clone(snap), client, local, listener.label.clone());
        s.protocol = match rec.protocol {
            "tls_passthrough" => Protocol::TlsPassthrough,
            "tls" => Protocol::Tls,
            _ => Protocol::Tcp,
        };
        s.sni = rec.sni.clone();
        s.alpn = hello.as_ref().map(|h| h.alpn.clone()).unwrap_or_default();
        s.route = Some(RouteIdx(ri));
        *plugged = Some(Box::new(Plugged { chain: chain.clone(), s }));
    }

    let Some(si) = route.service.map(|s| s.0) else {
        return Err(Fail::new(503, CloseReason::NoService, "no Service found with those values".to_owned()));
    };
    let svc = &snap.config.services[si];
    rec.service = Some(snap.service_labels[si].clone());
    if !svc.protocol.is_stream() || svc.protocol == Protocol::Udp {
        return Err(Fail::new(
            503,
            CloseReason::NoService,
            format!("service with protocol '{}' cannot be used with a TCP session", svc.protocol),
        ));
    }

    let mut client_stream = if terminate {
        // The certificate phase: global plugins, before the handshake.
        if let (Some(global), Some(p)) = (snap.chain(None), plugged.as_mut()) {
            if let PhaseOutcome::Reject { status, message, plugin } = global.certificate(&mut p.s).await {
                snap.metrics.plugin_rejected();
                return Err(rejected(status.code(), plugin, message));
            }
        }
        let config = snap.chain(Some(ri)).and_then(|c| c.tls_server.clone()).unwrap_or_else(|| snap.tls_server.clone());
        let acceptor = TlsAcceptor::from(config);
        let accepted = tokio::time::timeout(shared.preread_timeout, acceptor.accept(Rewind::new(buf, stream))).await;
        snap.metrics.tls_handshake(matches!(accepted, Ok(Ok(_))));
        match accepted {
            Ok(Ok(tls)) => {
                if let Some(p) = plugged.as_mut() {
                    p.s.tls = Some(tls_info(tls.get_ref().1));
                }
                ClientStream::Tls(Box::new(tls))
            }
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

    // The preread phase: after routing and TLS termination, before the
    // upstream is chosen.
    let mut target = None;
    if let Some(p) = plugged.as_mut() {
        if let PhaseOutcome::Reject { status, message, plugin } = p.chain.preread(&mut p.s).await {
            snap.metrics.plugin_rejected();
            // As Kong: a message reaches the client only below 400.
            if let (true, Some(m)) = (status.code() < 400, message.as_deref()) {
                let _ = tokio::time::timeout(shared.preread_timeout, client_stream.send_and_close(m.as_bytes())).await;
            }
            return Err(rejected(status.code(), plugin, message));
        }
        target = p.s.target;
    }

    let rt = &snap.services[si];
    let tls = match (&rt.tls, passthrough) {
        (Some(config), false) => Some(UpstreamTls {
            config: config.clone(),
            client_sni: route.preserve_host.then_some(rec.sni.as_deref()).flatten(),
            host_header: rt.host_header.as_deref(),
        }),
        _ => None,
    };
    let ends = Ends { client, local, sni: rec.sni.as_deref(), target };
    let connected = connect(snap, si, ends, tls).await;
    let tries = match &connected {
        Ok(c) => &c.tries,
        Err(f) => &f.tries,
    };
    for t in tries {
        snap.metrics.connect_attempt(t.error.is_none());
    }
    let connected = connected.map_err(|f| {
        rec.upstream = f.tries.last().map(|t| t.addr);
        rec.tries = f.tries;
        let reason = if f.tls { CloseReason::UpstreamTlsFailed } else { CloseReason::ConnectFailed };
        Fail::new(f.status, reason, f.error)
    })?;
    rec.tries = connected.tries;
    rec.upstream = Some(connected.addr);

    Ok((Ready { client: client_stream, upstream: connected.stream, _in_use: connected._in_use }, svc.idle_timeout()))
}

fn rejected(status: u16, plugin: &str, message: Option<String>) -> Fail {
    let detail = match message {
        Some(m) => format!("{plugin}: {m}"),
        None => plugin.to_owned(),
    };
    Fail::new(status, CloseReason::Rejected, detail)
}

/// What plugins and the log see of a terminated TLS session.
fn tls_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    };
    let cipher = conn.negotiated_cipher_suite().and_then(|c| c.suite().as_str()).unwrap_or("unknown").to_owned();
    let peer = conn.peer_certificates().and_then(|c| c.first());
    TlsInfo {
        version,
        cipher,
        client_verify: if peer.is_some() { "SUCCESS" } else { "NONE" },
        client_subject: peer.and_then(strait_tls::certificate_subject),
    }
}

impl ClientStream {
    /// Sends a plugin's message and closes the client's side.
    async fn send_and_close(&mut self, msg: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        match self {
            ClientStream::Plain(s) => {
                s.write_all(msg).await?;
                s.shutdown().await
            }
            ClientStream::Tls(s) => {
                s.write_all(msg).await?;
                s.shutdown().await
            }
        }
    }
}

/// Reads the PROXY protocol header a trusted peer must send first. Returns
/// the client and destination it names (the connection's own for `LOCAL`),
/// and leaves any bytes after it in `buf`.
async fn read_proxy_header(
    rec: &mut SessionRecord,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    local: SocketAddr,
    shared: &Shared,
) -> Result<(SocketAddr, SocketAddr), Fail> {
    let peer = rec.client;
    if !shared.trusted_ips.iter().any(|net| net.contains(&peer.ip())) {
        return Err(Fail::new(
            400,
            CloseReason::BadProxyHeader,
            format!("{} may not send a PROXY protocol header: not in trusted_ips", peer.ip()),
        ));
    }
    let deadline = Instant::now() + shared.preread_timeout;
    loop {
        match proxy_protocol::parse(buf) {
            Parsed::Header(header, len) => {
                buf.drain(..len);
                let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
                let (client, dst) = header.addrs.map_or((peer, local), |(src, dst)| (canonical(src), canonical(dst)));
                rec.client = client;
                rec.proxied = Some(Arc::new(Proxied { by: peer, header: *header }));
                return Ok((client, dst));
            }
            Parsed::Invalid(why) => return Err(Fail::new(400, CloseReason::BadProxyHeader, why)),
            Parsed::NeedMore => {}
        }
        let room = proxy_protocol::V2_MAX.saturating_sub(buf.len()).clamp(1, 4096);
        buf.reserve(room);
        let mut limited = (&mut *stream).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(buf)).await {
            Ok(Ok(0)) => {
                return Err(Fail::new(
                    400,
                    CloseReason::BadProxyHeader,
                    "the connection closed before a complete PROXY protocol header".to_owned(),
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Fail::new(400, CloseReason::ClientError, e.to_string())),
            Err(_) => {
                return Err(Fail::new(
                    400,
                    CloseReason::BadProxyHeader,
                    "no complete PROXY protocol header before preread_timeout".to_owned(),
                ));
            }
        }
    }
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
            Peek::Invalid(why) => return Ok(Classified::Invalid(why)),
        }
        if buf.len() >= MAX_PEEK {
            return Ok(Classified::Invalid("ClientHello too large"));
        }
        let deadline = start + if buf.is_empty() { first } else { total };
        buf.reserve(4096.min(MAX_PEEK - buf.len()));
        let room = (MAX_PEEK - buf.len()).min(4096);
        let mut limited = (&mut *stream).take(room as u64);
        match tokio::time::timeout_at(deadline, limited.read_buf(buf)).await {
            Ok(Ok(0)) if buf.is_empty() => return Ok(Classified::Eof),
            Ok(Ok(0)) => return Ok(Classified::Invalid("client closed in the middle of its ClientHello")),
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

    /// The size of what `f` returns, without calling it.
    fn returned<A, R>(_f: impl Fn(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_open_session_stays_small() {
        // Every open session keeps this future in its tokio task, which adds
        // 104 bytes and rounds up to 128: at 664 bytes or less the task is
        // 768 (see bench/README.md, idle memory). That is the release build
        // (656 bytes); an unoptimised one keeps a few more bytes across the
        // relay's await (672).
        let limit = if cfg!(debug_assertions) { 672 } else { 664 };
        let size = returned(|c: Accepted| serve(Box::pin(setup(c))));
        assert!(size <= limit, "a session's future grew to {size} bytes (at most {limit})");
    }
}
