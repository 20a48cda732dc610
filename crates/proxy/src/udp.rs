//! UDP proxying: datagrams from one client address form a session with its
//! own upstream socket; replies go back to that client from the listener's
//! socket; a session ends after `read_timeout` without a datagram either way.
//!
//! One task per listener owns the session table (no lock): it reads every
//! datagram, and for a known client sends it straight on the session's
//! connected upstream socket (no allocation). A new client's first datagrams
//! are queued while its session task routes, picks an upstream address and
//! connects. Each session task waits for replies and writes them through a
//! per-thread buffer, so an idle session holds no buffer. The table is capped
//! (`udp_max_sessions`): datagrams from new clients beyond it are dropped
//! and counted in a warning.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use std::os::fd::AsFd;
use strait_model::{Protocol, ServiceIdx};

use strait_plugin::{CloseReason, SessionRecord, Status, Try};
use strait_router::ConnKind;
use strait_upstream::InUse;
use strait_wire::{ClientHello, InitialReader, QuicPeek};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::handoff::{Carried, Flow, Handed};
use crate::live::{self, Registered};
use crate::relay::Report;
use crate::snapshot::Destination;
use crate::stages::{self, Fail, Plugged, Setup};
use crate::{ListenerInfo, Shared};

/// Largest UDP payload (65,535 − 8 byte UDP header − 20 byte IPv4 header),
/// plus room so a larger IPv6 jumbogram is seen as too large, not cut.
const MAX_DATAGRAM: usize = 65_536;

/// Datagrams queued for a session still connecting; more are dropped.
const SETUP_QUEUE: usize = 64;

/// Bytes a session may hold before it is connected (queued datagrams, and
/// those read for a QUIC server name): enough for a ClientHello spread over
/// several Initials, small enough that a flood of new clients stays bounded
/// (`udp_max_sessions` × this).
const SETUP_BYTES: u64 = 16 * 1024;

/// How long a client whose session could not open (no route, no service,
/// no upstream) is remembered: its datagrams are dropped and counted in one
/// log line, instead of a session and a line each.
const HOLD_DOWN: Duration = Duration::from_secs(1);

thread_local! {
    /// One receive buffer per worker thread for every session's replies.
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// What the listener task and a session task share.
#[derive(Debug)]
struct Link {
    /// Set once the session is connected.
    upstream: OnceLock<Arc<UdpSocket>>,
    /// Its entry in the sessions registry, which keeps its counts from the
    /// client and the time of its last datagram either way.
    live: Registered,
    began: Instant,
    /// Bytes buffered before the upstream was connected.
    setup_bytes: AtomicU64,
    /// The session has ended: a new datagram opens a new one.
    closed: std::sync::atomic::AtomicBool,
}

impl Link {
    fn new(live: Registered, upstream: OnceLock<Arc<UdpSocket>>, setup_bytes: u64) -> Link {
        Link {
            upstream,
            live,
            began: Instant::now(),
            setup_bytes: AtomicU64::new(setup_bytes),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

struct Entry {
    link: Arc<Link>,
    /// Datagrams that arrived before the upstream was connected.
    queue: mpsc::Sender<Vec<u8>>,
    generation: u64,
}

/// How long an upgrade's next generation waits for the previous one's
/// flows before it reads a UDP listener's socket anyway.
const GATE_WAIT: Duration = Duration::from_secs(10);

/// How long a stopping listener waits for its sessions to park when it
/// hands them over.
const PARK_WAIT: Duration = Duration::from_secs(2);

/// The session table of one listener, and what its sessions are made with.
struct Table {
    sessions: HashMap<SocketAddr, Entry>,
    generation: u64,
    info: Arc<ListenerInfo>,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    parked: mpsc::UnboundedSender<(u64, Flow)>,
    closing: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
}

impl Table {
    fn ctx(&self, client: SocketAddr, link: Arc<Link>, generation: u64) -> Ctx {
        Ctx {
            client,
            local: self.info.addr,
            listener: self.info.clone(),
            socket: self.socket.clone(),
            shared: self.shared.clone(),
            link,
            ended: self.ended.clone(),
            parked: self.parked.clone(),
            generation,
            closing: self.closing.clone(),
        }
    }

    /// A session an earlier generation handed over: into the table, and its
    /// task relaying again.
    fn adopt(&mut self, f: Flow) {
        let Flow { upstream, record, idle, idle_left, from_client, to_client, carried, alive, id, .. } = f;
        let upstream = std::net::UdpSocket::from(upstream);
        let upstream = match upstream.set_nonblocking(true).and_then(|()| UdpSocket::from_std(upstream)) {
            Ok(u) => Arc::new(u),
            Err(e) => {
                tracing::warn!(error = %e, "a handed-over UDP session could not be resumed");
                return;
            }
        };
        let client = record.client;
        self.generation += 1;
        let live = stages::register_moved(&self.shared, &record, self.info.addr, id);
        live.set_from_client(from_client.0, from_client.1);
        live.to_client(to_client.0, to_client.1);
        // The last activity is set so that the idle deadline is the one the
        // earlier generation had.
        live.relaying();
        let now = Instant::now();
        live.touch_at(now.checked_sub(idle.saturating_sub(idle_left)).unwrap_or(now));
        let link = Arc::new(Link::new(live, OnceLock::from(upstream.clone()), 0));
        // Connected already: nothing is ever queued for it.
        let (queue, _) = mpsc::channel(1);
        self.sessions.insert(client, Entry { link: link.clone(), queue, generation: self.generation });
        let ctx = self.ctx(client, link, self.generation);
        let alive = alive.unwrap_or_else(|| self.alive.clone());
        tokio::spawn(resumed(ctx, upstream, record, idle, to_client, carried, alive));
    }
}

/// Serves one `udp` listener until `stop` turns true. In an upgrade's next
/// generation, `gate` is closed until the previous generation's flows
/// (`adopted`) are all in the table: a datagram of theirs read before
/// would open a second session for the same client.
pub(crate) async fn run(
    socket: Arc<UdpSocket>,
    info: Arc<ListenerInfo>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
    mut adopted: mpsc::UnboundedReceiver<Flow>,
    mut gate: watch::Receiver<bool>,
) {
    // UDP has no connection to drain: at shutdown sessions end at once
    // (reason `shutdown`), and this tells them; in an upgrade they park
    // and move instead.
    let (closing_tx, closing) = watch::channel(false);
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let (parked_tx, mut parked_rx) = mpsc::unbounded_channel::<(u64, Flow)>();
    let mut t = Table {
        sessions: HashMap::new(),
        generation: 0,
        info: info.clone(),
        socket: socket.clone(),
        shared: shared.clone(),
        ended: ended_tx,
        parked: parked_tx,
        closing,
        alive,
    };
    if !*gate.borrow() {
        let waited = tokio::time::timeout(GATE_WAIT, async {
            loop {
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|v| *v) => return,
                    _ = gate.wait_for(|v| *v) => return,
                    Some(f) = adopted.recv() => t.adopt(f),
                }
            }
        })
        .await;
        if waited.is_err() {
            tracing::warn!(listener = %info.label, "the previous generation's UDP sessions did not all arrive: reading the socket");
        }
        // Those already sent are queued: into the table before any datagram.
        while let Ok(f) = adopted.try_recv() {
            t.adopt(f);
        }
    }
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut refused = 0u64;
    let mut last_warning: Option<Instant> = None;
    loop {
        let (n, client) = tokio::select! {
            biased;
            _ = stop.wait_for(|v| *v) => {
                let _ = closing_tx.send(true);
                break;
            }
            Some((client, generation)) = ended_rx.recv() => {
                if t.sessions.get(&client).is_some_and(|e| e.generation == generation) {
                    t.sessions.remove(&client);
                }
                continue;
            }
            Some(f) = adopted.recv() => {
                t.adopt(f);
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors for earlier replies surface here; carry on.
                    tracing::debug!(listener = %info.label, error = %e, "udp receive failed");
                    continue;
                }
            },
        };
        let client = SocketAddr::new(client.ip().to_canonical(), client.port());
        if n >= MAX_DATAGRAM {
            tracing::debug!(%client, "datagram larger than 65,535 bytes dropped");
            continue;
        }
        let datagram = &buf[..n];
        if t.sessions.get(&client).is_some_and(|e| e.link.closed.load(Ordering::Acquire)) {
            t.sessions.remove(&client);
        }
        if let Some(entry) = t.sessions.get(&client) {
            let link = &entry.link;
            link.live.received(n);
            // A full socket buffer drops the datagram, as the network would.
            if let Some(up) = link.upstream.get() {
                let _ = up.try_send(datagram);
            } else if link.setup_bytes.fetch_add(n as u64, Ordering::Relaxed) + n as u64 <= SETUP_BYTES {
                if let Err(mpsc::error::TrySendError::Closed(_)) = entry.queue.try_send(datagram.to_vec()) {
                    // Connected between the check and the send.
                    if let Some(up) = link.upstream.get() {
                        let _ = up.try_send(datagram);
                    }
                }
            }
            continue;
        }
        if t.sessions.len() >= shared.udp_max_sessions {
            refused += 1;
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                tracing::warn!(listener = %info.label, refused, max = shared.udp_max_sessions, "udp_max_sessions reached: datagrams from new clients dropped");
                last_warning = Some(Instant::now());
                refused = 0;
            }
            continue;
        }
        t.generation += 1;
        let facts = live::accepted(client, info.label.clone(), info.addr, Protocol::Udp);
        let live = shared.sessions.register(facts, shared.force_close.clone(), None);
        live.received(n);
        let link = Arc::new(Link::new(live, OnceLock::new(), n as u64));
        let (queue, queued) = mpsc::channel(SETUP_QUEUE);
        let first = datagram.to_vec();
        t.sessions.insert(client, Entry { link: link.clone(), queue, generation: t.generation });
        let ctx = t.ctx(client, link, t.generation);
        tokio::spawn(session(ctx, first, queued, t.alive.clone()));
    }
    let Some(tx) = shared.handoff.get() else { return };
    // An upgrade: every relaying session parks and moves, then the next
    // generation may read the socket (sessions still setting up end here).
    let mut waiting: std::collections::HashSet<u64> = t.sessions.values().map(|e| e.generation).collect();
    let mut flows = Vec::new();
    let _ = tokio::time::timeout(PARK_WAIT, async {
        while !waiting.is_empty() {
            tokio::select! {
                Some((g, f)) = parked_rx.recv() => {
                    waiting.remove(&g);
                    flows.push(f);
                }
                Some((_, g)) = ended_rx.recv() => {
                    waiting.remove(&g);
                }
            }
        }
    })
    .await;
    for f in flows {
        let _ = tx.send(Handed::Flow(f));
    }
    let _ = tx.send(Handed::FlowsDone(info.key.clone()));
}

struct Ctx {
    client: SocketAddr,
    local: SocketAddr,
    listener: Arc<ListenerInfo>,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    link: Arc<Link>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    /// Where a session that parks for an upgrade goes.
    parked: mpsc::UnboundedSender<(u64, Flow)>,
    generation: u64,
    /// Turns true when the listener stops.
    closing: watch::Receiver<bool>,
}

/// One client's session, from its first datagram to its idle expiry.
async fn session(ctx: Ctx, first: Vec<u8>, mut queued: mpsc::Receiver<Vec<u8>>, alive: mpsc::Sender<()>) {
    ctx.shared.stats.session_started();
    let snap = ctx.shared.snapshot.load_full();
    let label = ctx.listener.label.clone();
    let mut setup = Setup::new(snap, ctx.client, ctx.local, label, Protocol::Udp, CloseReason::IdleTimeout);
    let mut pending = vec![first];
    let mut closing = ctx.closing.clone();
    let live = &ctx.link.live;
    let opened = tokio::select! {
        biased;
        _ = closing.wait_for(|v| *v) => {
            Err(Fail::new(Status::Unavailable, CloseReason::Shutdown, "the listener is stopping".to_owned()))
        }
        killed = ctx.shared.force_close.closed_or_killed(live) => Err(match killed {
            true => Fail::new(Status::Unavailable, live.kill_reason(), None),
            false => Fail::new(Status::Unavailable, CloseReason::Shutdown, None),
        }),
        r = setup.open(&ctx, &mut pending, &mut queued) => r,
    };
    match opened {
        Err(fail) => {
            let shutdown = fail.reason == CloseReason::Shutdown;
            setup.rec.status = fail.status;
            setup.rec.reason = fail.reason;
            setup.rec.detail = fail.detail;
            // Stay in the table a moment, so the client's next datagrams are
            // dropped here rather than each opening (and logging) a session.
            if !shutdown {
                let _ = tokio::time::timeout(HOLD_DOWN, async { while queued.recv().await.is_some() {} }).await;
            }
            let (rec, plugged) = setup.finish();
            end(&ctx, rec, plugged, (0, 0), ctx.link.began, Duration::ZERO);
        }
        Ok((upstream, idle, in_use)) => {
            setup.publish(live);
            let target = in_use.as_ref().map(|u| u.target().clone());
            live.learn(|f| f.target = target);
            live.relaying();
            let (mut rec, plugged) = setup.finish();
            rec.connected_after = Some(ctx.link.began.elapsed());
            let _ = ctx.link.upstream.set(upstream.clone());
            // From now on the listener sends directly; what it queued before
            // goes first, then the queue is closed and emptied.
            for d in &pending {
                let _ = upstream.send(d).await;
            }
            queued.close();
            while let Some(d) = queued.recv().await {
                let _ = upstream.send(&d).await;
            }
            let began = ctx.link.began;
            relaying(ctx, upstream, idle, rec, plugged, (0, 0), began, Duration::ZERO, alive).await;
            drop(in_use);
        }
    }
}

/// A session an earlier generation handed over, relaying again.
async fn resumed(
    ctx: Ctx,
    upstream: Arc<UdpSocket>,
    mut record: SessionRecord,
    idle: Duration,
    to_client: (u64, u64),
    carried: Carried,
    alive: mpsc::Sender<()>,
) {
    record.moves = record.moves.saturating_add(1);
    let before = record.duration;
    let plugged = stages::replug(&ctx.shared, &record, carried, ctx.local, before);
    relaying(ctx, upstream, idle, record, plugged, to_client, Instant::now(), before, alive).await;
}

/// Relays a connected session until it ends, then logs it; or, in an
/// upgrade, parks it for the next generation. `since` and `before` give its
/// duration (`before` spent in earlier generations).
#[allow(clippy::too_many_arguments)]
async fn relaying(
    ctx: Ctx,
    upstream: Arc<UdpSocket>,
    idle: Duration,
    mut rec: SessionRecord,
    mut plugged: Option<Box<Plugged>>,
    mut to_client: (u64, u64),
    since: Instant,
    before: Duration,
    alive: mpsc::Sender<()>,
) {
    // Log plugins that report long sessions while they run.
    let every = plugged.as_ref().and_then(|p| p.chain.progress_every());
    let report = every.map(|every| {
        let (plugged, rec) = (&mut plugged, &rec);
        let call = Box::new(move |up: u64, down: u64| {
            if let Some(p) = plugged.as_mut() {
                let mut now = rec.clone();
                now.bytes_received = up;
                now.bytes_sent = down;
                now.duration = before + since.elapsed();
                p.chain.progress(&mut p.s, now, before + since.elapsed());
            }
        });
        Report { every, call }
    });
    rec.reason = relay(&ctx, &upstream, idle, &mut to_client, report).await;
    let handing = rec.reason == CloseReason::Shutdown && !ctx.shared.force_close.is_set();
    if let (true, Some(_)) = (handing, ctx.shared.handoff.get()) {
        // An upgrade: this session leaves for the next generation, which
        // logs it where it ends. Its table entry goes with the listener.
        if let Ok(fd) = upstream.as_fd().try_clone_to_owned() {
            let now = Instant::now();
            let last = ctx.link.live.last_activity();
            let from_client = ctx.link.live.received_counts();
            rec.duration = before + since.elapsed();
            rec.bytes_received = from_client.1;
            rec.bytes_sent = to_client.1;
            let flow = Flow {
                upstream: fd,
                listener: ctx.listener.key.clone(),
                idle,
                idle_left: (last + idle).saturating_duration_since(now),
                from_client,
                to_client,
                carried: Carried::from(plugged.as_deref()),
                record: rec,
                alive: Some(alive),
                id: ctx.link.live.id(),
            };
            let _ = ctx.parked.send((ctx.generation, flow));
            return;
        }
    }
    drop(alive);
    end(&ctx, rec, plugged, to_client, since, before);
}

/// The end of a session: out of the table, then logged.
fn end(
    ctx: &Ctx,
    mut rec: SessionRecord,
    plugged: Option<Box<Plugged>>,
    to_client: (u64, u64),
    since: Instant,
    before: Duration,
) {
    // Leave the table first, so a new datagram from this client opens a new session.
    ctx.link.closed.store(true, Ordering::Release);
    let _ = ctx.ended.send((ctx.client, ctx.generation));
    rec.duration = before + since.elapsed();
    let from_client = ctx.link.live.received_counts();
    rec.bytes_received = from_client.1;
    rec.bytes_sent = to_client.1;
    rec.datagrams = Some((from_client.0, to_client.0));
    stages::log(&ctx.shared, plugged, rec, &ctx.link.live);
}

type Opened = (Arc<UdpSocket>, Duration, Option<InUse>);

impl Setup {
    /// Every stage of a UDP session before it relays: the QUIC server name
    /// (when a route could be chosen by it), route, service, preread, then
    /// an address and a connected upstream socket.
    async fn open(
        &mut self,
        ctx: &Ctx,
        pending: &mut Vec<Vec<u8>>,
        queued: &mut mpsc::Receiver<Vec<u8>>,
    ) -> Result<Opened, Fail> {
        // QUIC: read the server name from the client's Initial packets
        // (never terminating QUIC).
        let hello = if self.snap.router.quic_sni_possible(ctx.client, ctx.local) {
            let preread = ctx.shared.tun().preread;
            quic_hello(pending, queued, preread, &ctx.link).await
        } else {
            None
        };
        let routed = self.route(ConnKind::Udp, hello, "no Route found with those values");
        let live = &ctx.link.live;
        self.publish(live);
        routed?;
        ctx.shared.sessions.open_event(live);
        let service = self.service();
        self.publish(live);
        let service = service?;
        let target = match self.preread() {
            None => None,
            Some(phase) => phase.await.map_err(|refusal| refusal.fail)?,
        };
        self.connect_udp(ctx, service, target).await
    }

    /// An address (a plugin's target, the service's, or one its upstream's
    /// balancer picks) and a socket connected to it.
    async fn connect_udp(
        &mut self,
        ctx: &Ctx,
        service: ServiceIdx,
        target: Option<SocketAddr>,
    ) -> Result<Opened, Fail> {
        let Some(svc) = self.snap.service(service) else {
            return Err(Fail::new(Status::Unavailable, CloseReason::NoService, None));
        };
        let no_peer = |why: String| Fail::new(Status::Unavailable, CloseReason::ConnectFailed, why);
        let chosen = target.map(Destination::Addr);
        let mut picked = None;
        let addr = match chosen.as_ref().unwrap_or(&svc.destination) {
            Destination::Addr(a) => *a,
            Destination::Balanced(b) => {
                b.ready(svc.connect_timeout).await;
                let mut picker = b.picker(ctx.client.ip()).map_err(|why| no_peer(why.to_string()))?;
                let attempt = picker.next().ok_or_else(|| no_peer(b.no_peer("no healthy address").to_string()))?;
                let addr = attempt.addr();
                picked = Some(attempt);
                addr
            }
        };
        let started = SystemTime::now();
        let t0 = Instant::now();
        self.rec.upstream = Some(addr);
        let bind: SocketAddr = if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let connected = async {
            let s = UdpSocket::bind(bind).await?;
            s.connect(addr).await?;
            Ok::<_, std::io::Error>(s)
        }
        .await;
        match connected {
            Ok(s) => {
                self.rec.tries.push(Try { addr, started, took: t0.elapsed(), error: None });
                Ok((Arc::new(s), svc.read_timeout, picked.map(|a| a.opened())))
            }
            Err(e) => {
                // A local failure (bind, route): nothing the upstream's
                // health should learn from.
                drop(picked);
                self.rec.tries.push(Try { addr, started, took: t0.elapsed(), error: Some(e.to_string()) });
                Err(Fail::new(Status::BadGateway, CloseReason::ConnectFailed, e.to_string()))
            }
        }
    }
}

/// The ClientHello in the client's first Initial packets, reading more
/// datagrams (kept in `pending` for the upstream) while it is incomplete,
/// until `timeout`. `None` for anything that is not a readable QUIC Initial.
async fn quic_hello(
    pending: &mut Vec<Vec<u8>>,
    queued: &mut mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
    link: &Link,
) -> Option<ClientHello> {
    let mut reader = InitialReader::new();
    let deadline = Instant::now() + timeout;
    let mut next = 0;
    loop {
        while let Some(d) = pending.get(next) {
            next += 1;
            match reader.push(d) {
                QuicPeek::Hello(h) => return Some(h),
                QuicPeek::NeedMore => {}
                QuicPeek::NotQuic => return None,
                QuicPeek::Invalid(why) => {
                    tracing::debug!(reason = why, "unreadable QUIC Initial: routed without a server name");
                    return None;
                }
            }
        }
        // The listener stops queueing at SETUP_BYTES, which bounds `pending` too.
        if link.setup_bytes.load(Ordering::Relaxed) > SETUP_BYTES {
            return None;
        }
        match tokio::time::timeout_at(deadline, queued.recv()).await {
            Ok(Some(d)) => pending.push(d),
            _ => return None,
        }
    }
}

/// Sends replies back until the session has been idle for `idle` in both
/// directions, or the proxy closes everything.
async fn relay(
    ctx: &Ctx,
    upstream: &UdpSocket,
    idle: Duration,
    to_client: &mut (u64, u64),
    mut report: Option<Report<'_>>,
) -> CloseReason {
    let force = &ctx.shared.force_close;
    let live = &ctx.link.live;
    let mut closing = ctx.closing.clone();
    // Made once, not per datagram: each would register a waiter (a lock).
    let stop = async {
        tokio::select! {
            killed = force.closed_or_killed(live) => killed,
            _ = closing.wait_for(|v| *v) => false,
        }
    };
    tokio::pin!(stop);
    let deadline = |ctx: &Ctx| ctx.link.live.last_activity() + idle;
    // The idle timer is not moved on every datagram: when it fires it
    // re-arms from the last activity or ends the session (as the TCP relay).
    let timer = tokio::time::sleep_until(deadline(ctx));
    tokio::pin!(timer);
    // A second timer only for sessions that report progress.
    let mut tick = report.as_ref().map(|r| Box::pin(tokio::time::sleep(r.every)));
    loop {
        tokio::select! {
            biased;
            killed = &mut stop => {
                return if killed { live.kill_reason() } else { CloseReason::Shutdown };
            }
            _ = &mut timer => {
                let at = deadline(ctx);
                if Instant::now() >= at {
                    return CloseReason::IdleTimeout;
                }
                timer.as_mut().reset(at);
                continue;
            }
            _ = async {
                match tick.as_mut() {
                    Some(t) => t.as_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                if let (Some(r), Some(t)) = (report.as_mut(), tick.as_mut()) {
                    (r.call)(live.received_counts().1, to_client.1);
                    t.as_mut().reset(Instant::now() + r.every);
                }
                continue;
            }
            ready = upstream.readable() => {
                if ready.is_err() {
                    return CloseReason::UpstreamError;
                }
            }
        }
        let sent = REPLY_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            match upstream.try_recv(&mut buf) {
                // Counted only when handed to the kernel.
                Ok(n) => Ok(ctx.socket.try_send_to(&buf[..n], ctx.client).ok().map(|_| n)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                Err(e) => Err(e),
            }
        });
        match sent {
            Ok(Some(n)) => {
                to_client.0 += 1;
                to_client.1 += n as u64;
                live.to_client(to_client.0, to_client.1);
            }
            Ok(None) => {}
            // ICMP port unreachable from the upstream: it is not listening.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Err(_) => return CloseReason::UpstreamError,
        }
    }
}
