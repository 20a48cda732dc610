//! The life of one TCP session, in the order it is lived: set up (PROXY
//! header, classify, route, TLS, preread, connect), relay, log.
//!
//! The stages are methods of [`Setup`]; those UDP sessions share (route,
//! service, preread, the log phase) are in `stages.rs`, the TCP-only ones
//! here. Every step that waits on the client or the upstream has a
//! deadline, and every way a session can end maps to a Kong stream status
//! and a close reason in the access log.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use strait_model::{Protocol, ServiceIdx};
use strait_plugin::data::Requests;
use strait_plugin::{
    CloseReason, Closed, Closing, Direction, OpenRecord, PhaseOutcome, Proxied, SessionRecord, Status, Stream, TlsInfo,
};
use strait_router::{ConnKind, PrereadNeed};
use strait_upstream::InUse;
use strait_wire::proxy_protocol::{self, Parsed};
use strait_wire::{ClientHello, MAX_HELLO_LEN, Peek};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::connect::{Ends, UpstreamStream, UpstreamTls, connect};
use crate::filtered::{Hooks, relay_filtered};
use crate::handoff::{Handed, Moving};
use crate::live::{self, Live, Registered};
use crate::relay::{Parked, RelayEnd, RelayOutcome, Report, Side, relay, relay_plain};
use crate::rewind::Rewind;
use crate::stages::{self, Fail, Plugged, Setup};
use crate::{ListenerInfo, Shared};

/// Bytes buffered while looking for a ClientHello, at most: enough for the
/// largest accepted hello split into several records.
const MAX_PEEK: usize = 2 * MAX_HELLO_LEN;

/// A connection just accepted, with what its session needs.
pub(crate) struct Accepted {
    pub(crate) stream: TcpStream,
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) listener: Arc<ListenerInfo>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) alive: mpsc::Sender<()>,
}

/// What a session keeps once its setup is over.
pub(crate) struct SetUp {
    shared: Arc<Shared>,
    /// Its place among the open sessions.
    _alive: mpsc::Sender<()>,
    /// Its entry in the sessions registry (the Admin API's view of it).
    live: Registered,
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
    let Accepted { stream, client, local, listener, shared, alive } = conn;
    shared.stats.session_started();
    let facts = live::accepted(client, listener.label.clone(), local, Protocol::Tcp);
    let live = shared.sessions.register(facts, shared.force_close.clone(), None);
    let snap = shared.snapshot.load_full();
    let mut setup = Setup::new(snap, client, local, listener.label.clone(), Protocol::Tcp, CloseReason::ClientClosed);
    let prepared = tokio::select! {
        biased;
        killed = shared.force_close.closed_or_killed(&live) => Err(match killed {
            true => Fail::new(Status::Unavailable, live.kill_reason(), None),
            false => Fail::new(Status::Unavailable, CloseReason::Shutdown, None),
        }),
        r = setup.run(stream, &listener, &shared, &live) => r,
    };
    let (ready, idle) = match prepared {
        Ok((ready, idle)) => (Some(ready), idle),
        Err(fail) => {
            setup.rec.status = fail.status;
            setup.rec.reason = fail.reason;
            setup.rec.detail = fail.detail;
            (None, Duration::ZERO)
        }
    };
    let (rec, plugged) = setup.finish();
    SetUp { shared, _alive: alive, live, rec, plugged, ready, idle }
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

impl Setup {
    /// Every stage of a TCP session before its relay, in order. Gives the
    /// streams and the service's idle timeout.
    async fn run(
        &mut self,
        mut stream: TcpStream,
        listener: &ListenerInfo,
        shared: &Shared,
        live: &Live,
    ) -> Result<(Ready, Duration), Fail> {
        let mut buf = Vec::new();
        if listener.proxy_protocol {
            self.read_proxy_header(&mut stream, &mut buf, shared).await?;
        }
        let (kind, hello, need) = self.classify(&mut stream, &mut buf, listener.ssl, shared).await?;
        let miss = match (kind, need) {
            (ConnKind::Plain, PrereadNeed::TlsOnly) if buf.is_empty() => {
                "only TLS routes match and no ClientHello arrived"
            }
            (ConnKind::Plain, PrereadNeed::TlsOnly) => "only TLS routes match and the client did not speak TLS",
            _ => "no Route found with those values",
        };
        if let Some(h) = hello.as_ref().filter(|h| !h.alpn.is_empty()) {
            let alpn = h.alpn.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
            live.learn(|f| f.more().alpn = alpn);
        }
        let routed = self.route(kind, hello, miss);
        self.publish(live);
        routed?;
        shared.sessions.open_event(live);
        let service = self.service();
        self.publish(live);
        let service = service?;
        let mut client = match self.rec.protocol {
            Protocol::Tls => self.terminate_tls(stream, buf, shared, live).await?,
            // Passthrough and plain: the bytes read so far are replayed.
            _ => ClientStream::Plain(Rewind::new(buf, stream)),
        };
        let target = match self.preread() {
            None => None,
            Some(phase) => match phase.await {
                Ok(target) => target,
                Err(refusal) => {
                    if let Some(m) = &refusal.tell_client {
                        let timeout = shared.tun().preread;
                        let _ = tokio::time::timeout(timeout, client.send_and_close(m.as_bytes())).await;
                    }
                    return Err(refusal.fail);
                }
            },
        };
        let connected = self.connect(client, service, target).await;
        self.publish(live);
        if let Ok((ready, _)) = &connected {
            let target = ready._in_use.as_ref().map(|u| u.target().clone());
            live.learn(|f| f.target = target);
        }
        connected
    }

    /// PROXY header: a trusted peer must send one first (v1 or v2, within
    /// `preread_timeout`); its source and destination replace the
    /// connection's for everything that follows (the connection's own for
    /// `LOCAL`). Bytes after it stay in `buf`.
    async fn read_proxy_header(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        shared: &Shared,
    ) -> Result<(), Fail> {
        let bad = |why: String| Fail::new(Status::BadRequest, CloseReason::BadProxyHeader, why);
        let peer = self.rec.client;
        let trusted = shared.tun().trusted_ips.iter().any(|net| net.contains(&peer.ip()));
        if !trusted {
            return Err(bad(format!("{} may not send a PROXY protocol header: not in trusted_ips", peer.ip())));
        }
        let deadline = Instant::now() + shared.tun().preread;
        loop {
            match proxy_protocol::parse(buf) {
                Parsed::Header(header, len) => {
                    buf.drain(..len);
                    let canonical = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
                    let (client, dst) =
                        header.addrs.map_or((peer, self.local), |(src, dst)| (canonical(src), canonical(dst)));
                    self.rec.client = client;
                    self.local = dst;
                    self.rec.proxied = Some(Arc::new(Proxied { by: peer, header: *header }));
                    return Ok(());
                }
                Parsed::Invalid(why) => return Err(bad(why)),
                Parsed::NeedMore => {}
            }
            let room = proxy_protocol::V2_MAX.saturating_sub(buf.len()).clamp(1, 4096);
            buf.reserve(room);
            let mut limited = (&mut *stream).take(room as u64);
            match tokio::time::timeout_at(deadline, limited.read_buf(buf)).await {
                Ok(Ok(0)) => return Err(bad("the connection closed before a complete PROXY protocol header".into())),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Fail::new(Status::BadRequest, CloseReason::ClientError, e.to_string())),
                Err(_) => return Err(bad("no complete PROXY protocol header before preread_timeout".into())),
            }
        }
    }

    /// Classify: TLS or not, and the ClientHello. Client bytes are awaited
    /// only when they could change the route, so that protocols where the
    /// server speaks first are never stalled. Gives the kind of session for
    /// the router, the hello, and what the router needed.
    async fn classify(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
        ssl: bool,
        shared: &Shared,
    ) -> Result<(ConnKind, Option<ClientHello>, PrereadNeed), Fail> {
        let need = if ssl { PrereadNeed::TlsOnly } else { self.snap.router.preread_need(self.rec.client, self.local) };
        let (preread, tls_detect) = {
            let t = shared.tun();
            (t.preread, t.tls_detect)
        };
        let classified = match need {
            PrereadNeed::None => Classified::Skipped,
            PrereadNeed::PlainFallback => read_first(stream, buf, tls_detect, preread).await?,
            PrereadNeed::TlsOnly => read_first(stream, buf, preread, preread).await?,
        };
        let bad = |reason, detail: Option<String>| Err(Fail::new(Status::BadRequest, reason, detail));
        match (ssl, classified) {
            (true, Classified::Hello(h)) => Ok((ConnKind::TlsOnSsl, Some(h), need)),
            (_, Classified::Invalid(why)) if need == PrereadNeed::TlsOnly => {
                bad(CloseReason::BadClientHello, Some(why.to_owned()))
            }
            (true, Classified::NotTls) => bad(CloseReason::NotTls, Some("an ssl listener accepts only TLS".to_owned())),
            (true, Classified::Silent) => bad(CloseReason::PrereadTimeout, None),
            (true, _) => bad(CloseReason::ClientClosed, None),
            (false, Classified::Hello(h)) => Ok((ConnKind::TlsOnPlain, Some(h), need)),
            // Anything else on a plain port, including bytes that only look
            // like TLS, goes to the plain route if there is one.
            (false, _) => Ok((ConnKind::Plain, None, need)),
        }
    }

    /// TLS, for a `tls` route: terminate (after the global plugins'
    /// certificate phase), with the route's own configuration when its
    /// plugins verify client certificates; within `preread_timeout`. The
    /// bytes read so far (the hello) are the handshake's first.
    async fn terminate_tls(
        &mut self,
        stream: TcpStream,
        buf: Vec<u8>,
        shared: &Shared,
        live: &Live,
    ) -> Result<ClientStream, Fail> {
        let snap = &self.snap;
        if let (Some(global), Some(p)) = (snap.chains.global(), self.plugged.as_mut()) {
            if let PhaseOutcome::Reject { status, message, plugin } = global.certificate(&mut p.s).await {
                snap.metrics.plugin_rejected();
                return Err(stages::rejected(status, plugin, message));
            }
        }
        let route_tls = self.route.and_then(|r| snap.route(r)?.chain.as_ref()?.tls_server());
        let acceptor = TlsAcceptor::from(route_tls.unwrap_or(&snap.tls_server).clone());
        let preread = shared.tun().preread;
        let accepted = tokio::time::timeout(preread, acceptor.accept(Rewind::new(buf, stream))).await;
        snap.metrics.tls_handshake(matches!(accepted, Ok(Ok(_))));
        let failed = |detail: String| Fail::new(Status::BadRequest, CloseReason::TlsHandshakeFailed, detail);
        match accepted {
            Ok(Ok(tls)) => {
                let info = tls_info(tls.get_ref().1);
                live.learn(|f| {
                    f.more().tls = Some(live::TlsFacts {
                        version: info.version,
                        cipher: info.cipher.clone(),
                        client_verify: info.client_verify,
                    })
                });
                if let Some(p) = self.plugged.as_mut() {
                    p.chain.tls_terminated(&mut p.s, info);
                }
                Ok(ClientStream::Tls(Box::new(tls)))
            }
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("handshake did not finish before preread_timeout".to_owned())),
        }
    }

    /// Connect: to the service's address, an address its upstream's
    /// balancer picks, or a plugin's target; with TLS when the service says
    /// `tls` (not for passthrough). Every attempt goes into the record.
    async fn connect(
        &mut self,
        client: ClientStream,
        service: ServiceIdx,
        target: Option<SocketAddr>,
    ) -> Result<(Ready, Duration), Fail> {
        // Field by field: the record is written while the snapshot is read.
        let snap = &self.snap;
        let (Some(route), Some(svc)) = (self.route.and_then(|r| snap.route(r)), snap.service(service)) else {
            return Err(Fail::new(Status::Unavailable, CloseReason::NoService, None));
        };
        let tls = match (&svc.tls, self.rec.protocol) {
            (Some(config), p) if p != Protocol::TlsPassthrough => Some(UpstreamTls {
                config: config.clone(),
                client_sni: route.preserve_host.then_some(self.rec.sni.as_deref()).flatten(),
                host_header: svc.host_header.as_deref(),
            }),
            _ => None,
        };
        let ends = Ends { client: self.rec.client, local: self.local, sni: self.rec.sni.as_deref(), target };
        let connected = connect(svc, ends, tls).await;
        let tries = match &connected {
            Ok(c) => &c.tries,
            Err(f) => &f.tries,
        };
        for t in tries {
            snap.metrics.connect_attempt(t.error.is_none());
        }
        let connected = connected.map_err(|f| {
            self.rec.upstream = f.tries.last().map(|t| t.addr);
            self.rec.tries = f.tries;
            let reason = if f.tls { CloseReason::UpstreamTlsFailed } else { CloseReason::ConnectFailed };
            Fail::new(f.status, reason, f.error)
        })?;
        self.rec.tries = connected.tries;
        self.rec.upstream = Some(connected.addr);
        let ready = Ready { client, upstream: connected.stream, _in_use: connected._in_use };
        Ok((ready, svc.idle_timeout))
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
        match strait_wire::peek(buf) {
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
            Ok(Err(e)) => return Err(Fail::new(Status::BadRequest, CloseReason::ClientError, e.to_string())),
            Err(_) if buf.is_empty() => return Ok(Classified::Silent),
            Err(_) => {
                return Err(Fail::new(
                    Status::BadRequest,
                    CloseReason::PrereadTimeout,
                    "incomplete ClientHello at preread_timeout".to_owned(),
                ));
            }
        }
    }
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

/// Runs one session to its end and writes its log line: relay, then log.
///
/// This future is the state every open session keeps (see `bench/README.md`,
/// idle memory). It receives its setup already boxed (see [`setup`]): what
/// only the setup needs (the accepted connection, the peek buffer,
/// handshakes, connect attempts) is freed when the relay starts instead of
/// staying in the task for the session's whole life, and nothing the relay
/// does not need is kept across it.
pub(crate) async fn serve<F: Future<Output = SetUp>>(setup: Pin<Box<F>>) {
    let SetUp { shared, _alive, live, mut rec, mut plugged, mut ready, idle } = setup.await;
    if let Some(streams) = ready.as_mut() {
        rec.connected_after = Some(live.t0().elapsed());
        live.relaying();
        // Through the relay the session keeps only what its setup found.
        let open = OpenRecord::new(rec);
        use ClientStream as C;
        use UpstreamStream as U;
        let l: &Live = &live;
        // Sessions with data-phase plugins relay through them; all others
        // keep the plain relay and pay nothing for the data phase.
        let data_phase = plugged.as_deref().filter(|p| p.chain.has_data_phase(p.s.protocol()));
        let out = match data_phase {
            Some(_) => {
                // Boxed: only these sessions keep the larger state.
                let max = shared.tun().stream_max_pending;
                Box::pin(relay_data_phase(streams, &mut plugged, max, &open, live.t0(), idle, l)).await
            }
            None => {
                let report = report(&mut plugged, &open, live.t0());
                match (&mut streams.client, &mut streams.upstream) {
                    (C::Plain(c), U::Plain(u)) => relay_plain(c, u, idle, l, report).await,
                    (C::Plain(c), U::Tls(u)) => relay(c, u.as_mut(), idle, l, report).await,
                    (C::Tls(c), U::Plain(u)) => relay(c.as_mut(), u, idle, l, report).await,
                    (C::Tls(c), U::Tls(u)) => relay(c.as_mut(), u.as_mut(), idle, l, report).await,
                }
            }
        };
        if let RelayEnd::HandOff(parked) = out.end {
            // An upgrade: the session leaves for the next generation, which
            // logs it where it ends.
            let carried = stages::Carried::from(plugged.as_deref());
            let record = open.close(closing_so_far(live.t0(), parked.c2u_bytes, parked.u2c_bytes));
            hand_off(&shared, ready.take(), *parked, record, idle, _alive, carried, live.id());
            return;
        }
        // The sockets close before the log phase, as the session ends.
        drop(ready.take());
        let (mut detail, mut status) = (None, None);
        let reason = match out.end {
            RelayEnd::Closed { first: Side::Client } => CloseReason::ClientClosed,
            RelayEnd::Closed { first: Side::Upstream } => CloseReason::UpstreamClosed,
            RelayEnd::IdleTimeout => CloseReason::IdleTimeout,
            RelayEnd::Killed => live.kill_reason(),
            // A hand-off returned above.
            RelayEnd::Shutdown | RelayEnd::HandOff(_) => CloseReason::Shutdown,
            RelayEnd::Error { side, error } => {
                detail = Some(error.to_string());
                match side {
                    Side::Client => CloseReason::ClientError,
                    Side::Upstream => CloseReason::UpstreamError,
                }
            }
            RelayEnd::Stopped(closed) => {
                let (s, reason, d) = stopped(closed);
                status = s;
                detail = Some(d);
                reason
            }
        };
        rec = open.close(Closing {
            duration: live.t0().elapsed(),
            bytes_sent: out.upstream_to_client,
            bytes_received: out.client_to_upstream,
            reason,
            detail,
        });
        if let Some(status) = status {
            rec.status = status;
        }
    } else {
        rec.duration = live.t0().elapsed();
    }
    stages::log(&shared, plugged, rec, &live);
}

/// Sends a parked session to the next generation (a plain or passthrough
/// one: only those park). Without a way there, its sockets just close.
#[cold]
#[allow(clippy::too_many_arguments)]
fn hand_off(
    shared: &Shared,
    ready: Option<Ready>,
    mut parked: Parked,
    record: SessionRecord,
    idle: Duration,
    alive: mpsc::Sender<()>,
    carried: stages::Carried,
    id: u64,
) {
    let (Some(tx), Some(Ready { client: ClientStream::Plain(client), upstream: UpstreamStream::Plain(upstream), .. })) =
        (shared.handoff.get(), ready)
    else {
        return;
    };
    let (client, rest) = client.into_parts();
    parked.c2u.extend(rest);
    let (Ok(client), Ok(upstream)) = (client.into_std(), upstream.into_std()) else { return };
    // A TCP listener's key is its label (`listen_key`).
    let listener = record.listener.to_string();
    let alive = Some(alive);
    let m =
        Moving { client: client.into(), upstream: upstream.into(), parked, record, idle, listener, carried, alive, id };
    let _ = tx.send(Handed::Session(m));
}

/// Progress reports for the log plugins that ask for them, while a session
/// relays.
fn report<'a>(plugged: &'a mut Option<Box<Plugged>>, open: &'a OpenRecord, t0: Instant) -> Option<Report<'a>> {
    let every = plugged.as_ref().and_then(|p| p.chain.progress_every())?;
    let call = Box::new(move |up: u64, down: u64| {
        if let Some(p) = plugged.as_mut() {
            p.chain.progress(&mut p.s, open.so_far(closing_so_far(t0, up, down)), t0.elapsed());
        }
    });
    Some(Report { every, call })
}

/// The record's end as it would be now, for a progress report.
fn closing_so_far(t0: Instant, up: u64, down: u64) -> Closing {
    Closing {
        duration: t0.elapsed(),
        bytes_sent: down,
        bytes_received: up,
        reason: CloseReason::ClientClosed,
        detail: None,
    }
}

/// How the log tells a session the data phase ended: a status when it is
/// not 200, the close reason, the detail.
fn stopped(closed: Closed) -> (Option<Status>, CloseReason, String) {
    match closed {
        Closed::ByPlugin { plugin } => (None, CloseReason::PluginClosed, plugin.to_owned()),
        Closed::Refused { plugin, status, message } => {
            let fail = stages::rejected(status, plugin, message);
            (Some(fail.status), fail.reason, fail.detail.unwrap_or_default())
        }
        Closed::PendingLimit { direction, held, max } => (
            Some(Status::InternalError),
            CloseReason::PendingLimit,
            format!("plugins held {held} bytes {}, more than stream_max_pending ({max})", direction.as_str()),
        ),
        Closed::Failed { plugin, reason } => {
            let detail = match plugin {
                Some(p) => format!("{p}: {reason}"),
                None => reason,
            };
            (Some(Status::InternalError), CloseReason::PluginFailed, detail)
        }
    }
}

/// A stream that is one of a session's two ends.
trait End: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> End for T {}

/// The relay of a session with data-phase plugins: their `on_connect`, then
/// every chunk through them, then their close notifications.
async fn relay_data_phase(
    streams: &mut Ready,
    plugged: &mut Option<Box<Plugged>>,
    max_pending: usize,
    open: &OpenRecord,
    t0: Instant,
    idle: Duration,
    live: &Live,
) -> RelayOutcome {
    let nothing = |end| RelayOutcome { end, client_to_upstream: 0, upstream_to_client: 0 };
    let Some(p) = plugged.as_deref_mut() else {
        return nothing(RelayEnd::Shutdown);
    };
    let mut stream = p.chain.stream(&mut p.s, open.upstream(), max_pending);
    let connected = tokio::select! {
        biased;
        killed = live.force().closed_or_killed(live) => {
            return nothing(if killed { RelayEnd::Killed } else { RelayEnd::Shutdown });
        }
        r = p.chain.connected(&mut p.s, &stream) => r,
    };
    if let Err(closed) = connected {
        finish_stream(p, &mut stream);
        return nothing(RelayEnd::Stopped(closed));
    }
    let (client, upstream): (&mut dyn End, &mut dyn End) = match (&mut streams.client, &mut streams.upstream) {
        (ClientStream::Plain(c), UpstreamStream::Plain(u)) => (c, u),
        (ClientStream::Plain(c), UpstreamStream::Tls(u)) => (c, u.as_mut()),
        (ClientStream::Tls(c), UpstreamStream::Plain(u)) => (c.as_mut(), u),
        (ClientStream::Tls(c), UpstreamStream::Tls(u)) => (c.as_mut(), u.as_mut()),
    };
    let mut hooks = DataHooks { p, stream, open, t0 };
    let out = relay_filtered(client, upstream, &mut hooks, idle, live).await;
    finish_stream(hooks.p, &mut hooks.stream);
    out
}

/// The close notifications not yet sent, as the session ends.
fn finish_stream(p: &mut Plugged, stream: &mut Stream) {
    for d in [Direction::Downstream, Direction::Upstream] {
        p.chain.finished(&mut p.s, stream, d);
    }
}

/// The data phase as the filtered relay drives it.
struct DataHooks<'a> {
    p: &'a mut Plugged,
    stream: Stream,
    open: &'a OpenRecord,
    t0: Instant,
}

impl Hooks for DataHooks<'_> {
    fn data(&mut self, d: Direction, input: &[u8], end_of_stream: bool, out: &mut Vec<u8>) -> Result<(), Closed> {
        self.p.chain.data(&mut self.p.s, &mut self.stream, d, input, end_of_stream, out)
    }

    fn resume(&mut self, d: Direction, stages: u32, out: &mut Vec<u8>) -> Result<(), Closed> {
        self.p.chain.resume(&mut self.p.s, &mut self.stream, d, stages, out)
    }

    fn finished(&mut self, d: Direction) {
        self.p.chain.finished(&mut self.p.s, &mut self.stream, d);
    }

    fn holds(&self, d: Direction) -> bool {
        self.stream.holds(d)
    }

    fn poll_requests(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Requests> {
        self.stream.control().poll_requests(cx)
    }

    fn progress_every(&self) -> Option<Duration> {
        self.p.chain.progress_every()
    }

    fn progress(&mut self, up: u64, down: u64) {
        let now = self.open.so_far(closing_so_far(self.t0, up, down));
        self.p.chain.progress(&mut self.p.s, now, self.t0.elapsed());
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
        // (640 bytes since the record keeps its protocol and status as
        // one-byte enums; 656 before); an unoptimised one keeps a few more
        // bytes across the relay's await (656).
        let limit = if cfg!(debug_assertions) { 672 } else { 664 };
        let size = returned(|c: Accepted| serve(Box::pin(setup(c))));
        assert!(size <= limit, "a session's future grew to {size} bytes (at most {limit})");
    }
}
