//! The open sessions, as the Admin API sees them: a registry every session
//! joins when it is accepted and leaves when it ends, what is known of each
//! so far, a way to close one from outside, and a stream of open and close
//! events.
//!
//! The registry is sharded by session id, so setting a session up or ending
//! it takes one uncontended shard lock, never a global one. A session's
//! facts are written at the few points its setup learns something (accept,
//! route, TLS, connect) under its own small lock; its counters are relaxed
//! atomics the relay stores into when it makes progress. Listing copies the
//! entries' handles shard by shard and reads each without stopping it.
//!
//! Closing a session from outside sets its `killed` flag and wakes that
//! session's task alone, through the waker it left in its entry once (when
//! it began to wait); the woken session sees its flag. So the relay locks
//! nothing new: a poll reads one more flag of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use serde_json::{Value, json};
use strait_model::Protocol;
use strait_plugin::{CloseReason, SessionRecord};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::ForceClose;

/// Shards of the registry: enough that two workers rarely meet on one.
const SHARDS: usize = 64;

/// Events kept for slow readers of the event stream before they are dropped.
const EVENT_BACKLOG: usize = 4096;

/// Session ids are unique across generations: each generation numbers its
/// sessions from its own generation number times this.
pub const IDS_PER_GENERATION: u64 = 1 << 40;

/// An entity a session is about: its id, and its name when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub id: Arc<str>,
    pub name: Option<Arc<str>>,
}

impl Named {
    pub(crate) fn json(&self) -> Value {
        json!({ "id": &*self.id, "name": self.name.as_deref() })
    }

    /// Whether `key` is this entity's id or name.
    pub fn is(&self, key: &str) -> bool {
        &*self.id == key || self.name.as_deref() == Some(key)
    }
}

/// What a terminated TLS session negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    pub version: &'static str,
    pub cipher: String,
    pub client_verify: &'static str,
}

/// What is known of a session so far, filled in as its setup goes. It is
/// part of every open session's registry entry, so what only some sessions
/// have (a PROXY header, a ClientHello, a TLS handshake) is boxed apart and
/// entities are shared with the snapshot.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The client: the peer, or the source its PROXY header named.
    pub client: SocketAddr,
    /// The address the client reached (its PROXY header's destination).
    pub server: SocketAddr,
    /// The upstream address connected to.
    pub address: Option<SocketAddr>,
    pub listener: Arc<str>,
    /// The target (`host:port`) that address belongs to.
    pub target: Option<Arc<str>>,
    pub route: Option<Arc<Named>>,
    pub service: Option<Arc<Named>>,
    /// The upstream entity of the session's service, if it has one.
    pub upstream: Option<Arc<Named>>,
    pub more: Option<Box<More>>,
    pub tries: u32,
    pub protocol: Protocol,
}

/// The facts only some sessions have.
#[derive(Debug, Clone, Default)]
pub struct More {
    /// The load balancer that sent a PROXY header.
    pub proxied_by: Option<SocketAddr>,
    pub sni: Option<String>,
    pub alpn: Vec<String>,
    pub tls: Option<TlsFacts>,
}

impl Facts {
    /// The rarer facts, to write.
    pub(crate) fn more(&mut self) -> &mut More {
        self.more.get_or_insert_with(Box::default)
    }

    pub fn proxied_by(&self) -> Option<SocketAddr> {
        self.more.as_ref().and_then(|m| m.proxied_by)
    }

    pub fn sni(&self) -> Option<&str> {
        self.more.as_ref().and_then(|m| m.sni.as_deref())
    }

    pub fn alpn(&self) -> &[String] {
        self.more.as_ref().map_or(&[], |m| &m.alpn)
    }

    pub fn tls(&self) -> Option<&TlsFacts> {
        self.more.as_ref().and_then(|m| m.tls.as_ref())
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Setup,
    Relaying,
    /// Relaying while its listener drains (a shutdown, a removed listener).
    Draining,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Setup => "setup",
            State::Relaying => "relaying",
            State::Draining => "draining",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        [State::Setup, State::Relaying, State::Draining].into_iter().find(|x| x.as_str() == s)
    }
}

/// One open session's entry.
#[derive(Debug)]
pub struct Live {
    id: u64,
    registry: Arc<Registry>,
    /// Its listener's close signal: a kill wakes the session through it.
    force: Arc<ForceClose>,
    /// When this process accepted (or took over) the session: its record's
    /// durations count from here.
    t0: Instant,
    /// Milliseconds since the Unix epoch (for a moved session, when the
    /// first generation accepted it).
    started_ms: u64,
    relaying: AtomicBool,
    /// Out of the registry already.
    left: AtomicBool,
    /// Why it was closed from outside (`Kill` as a byte); 0 while it was not.
    killed: AtomicU8,
    /// Bytes from the client and to it.
    up: AtomicU64,
    down: AtomicU64,
    /// UDP: datagrams from the client and to it.
    dgrams_up: AtomicU64,
    dgrams_down: AtomicU64,
    udp: bool,
    /// Milliseconds from the registry's epoch to the last byte either way
    /// (before it for a UDP flow an earlier generation handed over).
    last: AtomicI64,
    /// What is known of it, and its task's waker for a kill to wake (one
    /// lock for both: they are written at different moments, rarely).
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    facts: Facts,
    waker: Option<Waker>,
}

impl Live {
    pub fn id(&self) -> u64 {
        self.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn t0(&self) -> Instant {
        self.t0
    }

    pub(crate) fn force(&self) -> &ForceClose {
        &self.force
    }

    /// Closed from outside (the Admin API).
    pub(crate) fn killed(&self) -> bool {
        self.killed.load(Ordering::Acquire) != 0
    }

    /// Why it was closed from outside, for its record.
    pub(crate) fn kill_reason(&self) -> CloseReason {
        match self.killed.load(Ordering::Acquire) {
            x if x == Kill::TargetDown as u8 => CloseReason::TargetDown,
            x if x == Kill::TargetRemoved as u8 => CloseReason::TargetRemoved,
            _ => CloseReason::ClosedByAdmin,
        }
    }

    /// Edits what is known of the session.
    pub(crate) fn learn(&self, f: impl FnOnce(&mut Facts)) {
        f(&mut self.lock().facts);
    }

    /// The listener that accepted it.
    pub fn listener(&self) -> Arc<str> {
        self.lock().facts.listener.clone()
    }

    /// The session's setup is over: it relays from now on.
    pub(crate) fn relaying(&self) {
        self.relaying.store(true, Ordering::Relaxed);
        self.touch_at(Instant::now());
    }

    /// The relay made progress at `now`; these are its byte counts.
    #[inline]
    pub(crate) fn progress(&self, up: u64, down: u64, now: Instant) {
        self.up.store(up, Ordering::Relaxed);
        self.down.store(down, Ordering::Relaxed);
        self.touch_at(now);
    }

    #[inline]
    pub(crate) fn touch_at(&self, now: Instant) {
        let epoch = self.registry.epoch;
        let ms = match now.checked_duration_since(epoch) {
            Some(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
            None => -i64::try_from(epoch.duration_since(now).as_millis()).unwrap_or(i64::MAX),
        };
        self.last.store(ms, Ordering::Relaxed);
    }

    /// UDP: a datagram of `n` bytes from the client.
    #[inline]
    pub(crate) fn received(&self, n: usize) {
        self.dgrams_up.fetch_add(1, Ordering::Relaxed);
        self.up.fetch_add(n as u64, Ordering::Relaxed);
        self.touch_at(Instant::now());
    }

    /// UDP: the counts of datagrams and bytes sent to the client so far.
    #[inline]
    pub(crate) fn to_client(&self, datagrams: u64, bytes: u64) {
        self.dgrams_down.store(datagrams, Ordering::Relaxed);
        self.down.store(bytes, Ordering::Relaxed);
        self.touch_at(Instant::now());
    }

    /// UDP: datagrams and bytes from the client so far.
    pub(crate) fn received_counts(&self) -> (u64, u64) {
        (self.dgrams_up.load(Ordering::Relaxed), self.up.load(Ordering::Relaxed))
    }

    /// When the last byte went either way.
    pub(crate) fn last_activity(&self) -> Instant {
        let ms = self.last.load(Ordering::Relaxed);
        let d = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            self.registry.epoch + d
        } else {
            self.registry.epoch.checked_sub(d).unwrap_or(self.registry.epoch)
        }
    }

    /// Its protocol and state now, without copying its facts (`/metrics`).
    pub fn protocol_and_state(&self) -> (Protocol, State) {
        let protocol = self.lock().facts.protocol;
        (protocol, self.state())
    }

    fn state(&self) -> State {
        match (self.relaying.load(Ordering::Relaxed), self.force.draining()) {
            (false, _) => State::Setup,
            (true, false) => State::Relaying,
            (true, true) => State::Draining,
        }
    }

    /// The session as the Admin API lists it, now.
    pub fn view(&self) -> View {
        let facts = self.lock().facts.clone();
        let state = self.state();
        let last = self.last.load(Ordering::Relaxed);
        View {
            id: self.id,
            state,
            facts,
            started_at: self.started_ms,
            last_activity_at: self.registry.epoch_unix_ms.saturating_add_signed(last),
            bytes_from_client: self.up.load(Ordering::Relaxed),
            bytes_to_client: self.down.load(Ordering::Relaxed),
            datagrams: self
                .udp
                .then(|| (self.dgrams_up.load(Ordering::Relaxed), self.dgrams_down.load(Ordering::Relaxed))),
        }
    }

    /// Closes the session from outside: both sides close at once, and it
    /// is logged as closed by the admin. False when it was closed so already.
    pub fn kill(&self) -> bool {
        self.kill_for(Kill::Admin)
    }

    /// As [`Live::kill`], saying why.
    pub fn kill_for(&self, why: Kill) -> bool {
        if self.killed.compare_exchange(0, why as u8, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        if why == Kill::Admin {
            self.registry.closed_by_admin.fetch_add(1, Ordering::Relaxed);
        }
        // The flag is set before the lock: a waker left after this reads it.
        let waker = self.lock().waker.take();
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Leaves the waker of the session's task, for a kill to wake; the
    /// caller reads `killed` after this.
    pub(crate) fn wake_on_kill(&self, waker: &Waker) {
        let w = &mut self.lock().waker;
        if !w.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *w = Some(waker.clone());
        }
    }
}

/// Why a session is closed from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kill {
    /// The Admin API: `DELETE /sessions`, a drain's timeout.
    Admin = 1,
    /// `on_target_down: close`.
    TargetDown = 2,
    /// `on_target_removed`.
    TargetRemoved = 3,
}

/// A session's place in the registry: dropping it takes the session out.
#[derive(Debug)]
pub(crate) struct Registered(Arc<Live>);

impl std::ops::Deref for Registered {
    type Target = Live;
    fn deref(&self) -> &Live {
        &self.0
    }
}

impl Live {
    /// The session ended with `rec`: out of the registry, and a close event.
    /// The session ended: out of the registry (before its log phase, so
    /// that nothing lists or kills a session whose sockets are closed).
    pub(crate) fn leave(&self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.registry.remove(self);
        }
    }

    /// Its close event, once its record is final.
    pub(crate) fn closed(&self, rec: &SessionRecord) {
        self.registry.close_event(self, rec);
    }

    /// Whether the session's upstream is entity `upstream` (its id) and its
    /// target `target`.
    pub(crate) fn is_on(&self, upstream: &str, target: &str) -> bool {
        let f = &self.lock().facts;
        f.upstream.as_ref().is_some_and(|u| &*u.id == upstream) && f.target.as_deref() == Some(target)
    }

    /// Whether the session's upstream is entity `upstream` and it is
    /// connected to `addr`.
    pub(crate) fn is_at(&self, upstream: &str, addr: SocketAddr) -> bool {
        let f = &self.lock().facts;
        f.upstream.as_ref().is_some_and(|u| &*u.id == upstream) && f.address == Some(addr)
    }

    /// UDP, a session handed over: the counts it had from the client.
    pub(crate) fn set_from_client(&self, datagrams: u64, bytes: u64) {
        self.dgrams_up.store(datagrams, Ordering::Relaxed);
        self.up.store(bytes, Ordering::Relaxed);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// One shard of the registry: its sessions by id.
type Shard = Mutex<HashMap<u64, Arc<Live>>>;

/// Every open session of this process.
#[derive(Debug)]
pub struct Registry {
    shards: Box<[Shard]>,
    next: AtomicU64,
    epoch: Instant,
    epoch_unix_ms: u64,
    /// Readers of the event stream: events are made only when there are some.
    watchers: AtomicUsize,
    events: broadcast::Sender<Arc<Event>>,
    closed_by_admin: AtomicU64,
    /// Sessions ended, by `CloseReason` (its index in `CloseReason::ALL`).
    closes: [AtomicU64; CloseReason::ALL.len()],
    /// Bytes from and to the clients of the sessions ended.
    ended_received: AtomicU64,
    ended_sent: AtomicU64,
    /// The totals last reported: a session between leaving the registry
    /// and its close is in neither sum, and a counter must not go down.
    reported: [AtomicU64; 2],
}

/// One event of the stream: a session opened or closed.
#[derive(Debug)]
pub struct Event {
    pub kind: &'static str,
    pub view: View,
    /// For a close: how it ended.
    pub record: Option<Value>,
}

impl Event {
    pub fn json(&self) -> Value {
        let mut v = json!({ "event": self.kind, "session": self.view.json() });
        if let Some(r) = &self.record {
            v["record"] = r.clone();
        }
        v
    }
}

/// A subscription to the event stream; unsubscribes when dropped.
#[derive(Debug)]
pub struct Watch {
    registry: Arc<Registry>,
    pub rx: broadcast::Receiver<Arc<Event>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.registry.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Registry {
    /// A registry whose sessions are numbered from `generation`'s range.
    pub fn new(generation: u64) -> Arc<Registry> {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Arc::new(Registry {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            next: AtomicU64::new(generation.saturating_mul(IDS_PER_GENERATION).max(1)),
            epoch: Instant::now(),
            epoch_unix_ms: unix_ms(SystemTime::now()),
            watchers: AtomicUsize::new(0),
            events,
            closed_by_admin: AtomicU64::new(0),
            closes: std::array::from_fn(|_| AtomicU64::new(0)),
            ended_received: AtomicU64::new(0),
            ended_sent: AtomicU64::new(0),
            reported: [AtomicU64::new(0), AtomicU64::new(0)],
        })
    }

    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<Live>>> {
        &self.shards[(id % SHARDS as u64) as usize]
    }

    /// A new session, or one an earlier generation handed over (`moved`:
    /// its id and start).
    pub(crate) fn register(
        self: &Arc<Self>,
        facts: Facts,
        force: Arc<ForceClose>,
        moved: Option<(u64, SystemTime)>,
    ) -> Registered {
        let (id, started) = match moved {
            Some((id, started)) if id != 0 => (id, started),
            // From a generation that did not number its sessions: a new id, its start kept.
            Some((_, started)) => (self.next.fetch_add(1, Ordering::Relaxed), started),
            None => (self.next.fetch_add(1, Ordering::Relaxed), SystemTime::now()),
        };
        let live = Arc::new(Live {
            id,
            registry: self.clone(),
            force,
            t0: Instant::now(),
            started_ms: unix_ms(started),
            relaying: AtomicBool::new(false),
            left: AtomicBool::new(false),
            killed: AtomicU8::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            dgrams_up: AtomicU64::new(0),
            dgrams_down: AtomicU64::new(0),
            udp: facts.protocol == Protocol::Udp,
            last: AtomicI64::new(0),
            inner: Mutex::new(Inner { facts, waker: None }),
        });
        live.touch_at(Instant::now());
        self.shard(id).lock().unwrap_or_else(|p| p.into_inner()).insert(id, live.clone());
        Registered(live)
    }

    /// Takes `live` out: only that entry, not another that took its id
    /// since (a session resumed here after a failed hand-off).
    fn remove(&self, live: &Live) {
        let mut shard = self.shard(live.id).lock().unwrap_or_else(|p| p.into_inner());
        if shard.get(&live.id).is_some_and(|e| std::ptr::eq(Arc::as_ptr(e), live)) {
            shard.remove(&live.id);
        }
    }

    /// One open session.
    pub fn get(&self, id: u64) -> Option<Arc<Live>> {
        self.shard(id).lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// Every open session, in no order.
    pub fn all(&self) -> Vec<Arc<Live>> {
        let mut out = Vec::new();
        for s in self.shards.iter() {
            out.extend(s.lock().unwrap_or_else(|p| p.into_inner()).values().cloned());
        }
        out
    }

    /// Sessions closed through the Admin API so far.
    pub fn closed_by_admin(&self) -> u64 {
        self.closed_by_admin.load(Ordering::Relaxed)
    }

    /// Subscribes to open and close events.
    pub fn watch(self: &Arc<Self>) -> Watch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch { registry: self.clone(), rx: self.events.subscribe() }
    }

    fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// The session was routed: an open event, if anyone watches.
    pub(crate) fn open_event(&self, live: &Live) {
        if self.watched() {
            let _ = self.events.send(Arc::new(Event { kind: "open", view: live.view(), record: None }));
        }
    }

    /// Sessions ended so far, by reason (in `CloseReason::ALL` order).
    pub fn closes(&self) -> impl Iterator<Item = (CloseReason, u64)> + '_ {
        CloseReason::ALL.iter().zip(&self.closes).map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }

    /// Bytes from and to clients so far: the sessions ended and those open.
    pub fn bytes(&self) -> (u64, u64) {
        let (mut received, mut sent) =
            (self.ended_received.load(Ordering::Relaxed), self.ended_sent.load(Ordering::Relaxed));
        for l in self.all() {
            received += l.up.load(Ordering::Relaxed);
            sent += l.down.load(Ordering::Relaxed);
        }
        let monotonic = |slot: &AtomicU64, now: u64| slot.fetch_max(now, Ordering::Relaxed).max(now);
        (monotonic(&self.reported[0], received), monotonic(&self.reported[1], sent))
    }

    fn close_event(&self, live: &Live, rec: &SessionRecord) {
        // Counted once per session, where it ends (not on the data path).
        if let Some(n) = self.closes.get(rec.reason as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        self.ended_received.fetch_add(rec.bytes_received, Ordering::Relaxed);
        self.ended_sent.fetch_add(rec.bytes_sent, Ordering::Relaxed);
        if self.watched() {
            let record = json!({
                "status": rec.status.code(),
                "reason": rec.reason.as_str(),
                "detail": rec.detail,
                "duration_ms": rec.duration.as_millis() as u64,
                "bytes_received": rec.bytes_received,
                "bytes_sent": rec.bytes_sent,
                "datagrams": rec.datagrams.map(|(from, to)| json!({ "received": from, "sent": to })),
                "tries": rec.tries.len(),
                "moves": rec.moves,
            });
            let mut view = live.view();
            view.bytes_from_client = rec.bytes_received;
            view.bytes_to_client = rec.bytes_sent;
            let _ = self.events.send(Arc::new(Event { kind: "close", view, record: Some(record) }));
        }
    }
}

/// A session as listed.
#[derive(Debug, Clone)]
pub struct View {
    pub id: u64,
    pub state: State,
    pub facts: Facts,
    /// Milliseconds since the Unix epoch.
    pub started_at: u64,
    pub last_activity_at: u64,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    /// UDP: datagrams from the client and to it.
    pub datagrams: Option<(u64, u64)>,
}

impl View {
    /// Kong-style JSON.
    pub fn json(&self) -> Value {
        let f = &self.facts;
        let addr = |a: SocketAddr| json!({ "ip": a.ip().to_string(), "port": a.port() });
        json!({
            "id": self.id,
            "protocol": f.protocol.as_str(),
            "state": self.state.as_str(),
            "client": addr(f.client),
            "proxied_by": f.proxied_by().map(addr),
            "listener": &*f.listener,
            "server": addr(f.server),
            "sni": f.sni(),
            "alpn": f.alpn(),
            "tls": f.tls().map(|t| json!({
                "version": t.version, "cipher": t.cipher, "client_verify": t.client_verify,
            })),
            "route": f.route.as_deref().map(Named::json),
            "service": f.service.as_deref().map(Named::json),
            "upstream": {
                "address": f.address.map(|a| a.to_string()),
                "target": f.target.as_deref(),
                "id": f.upstream.as_ref().map(|u| &*u.id),
                "name": f.upstream.as_ref().and_then(|u| u.name.as_deref()),
            },
            "started_at": self.started_at,
            "last_activity_at": self.last_activity_at,
            "bytes": {
                "received": self.bytes_from_client,
                "sent": self.bytes_to_client,
                "total": self.bytes_from_client + self.bytes_to_client,
            },
            "datagrams": self.datagrams.map(|(from, to)| json!({ "received": from, "sent": to })),
            "tries": f.tries,
        })
    }
}

/// Which sessions a list, a kill or the event stream is about. Every field
/// set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub route: Option<String>,
    pub service: Option<String>,
    /// The upstream entity (id or name) or the upstream address.
    pub upstream: Option<String>,
    /// The target (`host:port`) or the upstream address.
    pub target: Option<String>,
    pub client: Option<IpNet>,
    pub sni: Option<String>,
    pub protocol: Option<Protocol>,
    pub state: Option<State>,
    pub older_than: Option<Duration>,
    pub idle_for: Option<Duration>,
}

impl Filter {
    /// No condition at all: every session matches.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// Whether `v` matches, `now_ms` being the time now (ms since the epoch).
    pub fn matches(&self, v: &View, now_ms: u64) -> bool {
        let f = &v.facts;
        let named = |want: &Option<String>, have: &Option<Arc<Named>>| match want {
            None => true,
            Some(w) => have.as_ref().is_some_and(|h| h.is(w)),
        };
        let address_is = |w: &str| f.address.is_some_and(|a| a.to_string() == w);
        named(&self.route, &f.route)
            && named(&self.service, &f.service)
            && self.upstream.as_deref().is_none_or(|w| f.upstream.as_ref().is_some_and(|u| u.is(w)) || address_is(w))
            && self.target.as_deref().is_none_or(|w| f.target.as_deref().is_some_and(|t| t == w) || address_is(w))
            && self.client.is_none_or(|net| net.contains(&f.client.ip()))
            && self.sni.as_deref().is_none_or(|w| f.sni().is_some_and(|s| s.eq_ignore_ascii_case(w)))
            && self.protocol.is_none_or(|p| p == f.protocol)
            && self.state.is_none_or(|s| s == v.state)
            && self.older_than.is_none_or(|d| now_ms.saturating_sub(v.started_at) >= millis(d))
            && self.idle_for.is_none_or(|d| now_ms.saturating_sub(v.last_activity_at) >= millis(d))
    }
}

/// `d` in milliseconds, saturating (a huge `older_than` matches nothing).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Facts for a session known only by its peer and listener (accept time).
pub fn accepted(client: SocketAddr, listener: Arc<str>, server: SocketAddr, protocol: Protocol) -> Facts {
    Facts {
        client,
        server,
        address: None,
        listener,
        target: None,
        route: None,
        service: None,
        upstream: None,
        more: None,
        tries: 0,
        protocol,
    }
}

/// A registered session of its own registry and close signal, for tests.
#[cfg(test)]
pub(crate) fn test_entry() -> Registered {
    let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
    Registry::new(0).register(accepted(addr, "test".into(), addr, Protocol::Tcp), Arc::default(), None)
}

#[cfg(test)]
pub(crate) fn test_registry(of: &Live) -> Arc<Registry> {
    of.registry.clone()
}

#[cfg(test)]
impl Registry {
    /// Another session on the same listener as `of`.
    pub(crate) fn test_sibling(self: &Arc<Self>, of: &Live) -> Registered {
        let facts = of.lock().facts.clone();
        self.register(facts, of.force.clone(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_leave_the_registry_when_dropped_and_filters_combine() {
        let a = test_entry();
        let reg = test_registry(&a);
        let b = reg.test_sibling(&a);
        b.learn(|f| {
            f.more().sni = Some("Db.Example".into());
            f.route = Some(Arc::new(Named { id: "r1".into(), name: Some("pg".into()) }));
            f.address = Some(([10, 0, 0, 2], 5432).into());
            f.target = Some("db.internal:5432".into());
        });
        assert_eq!(reg.all().len(), 2);
        let now = now_ms();
        let view = b.view();
        let f = Filter { sni: Some("db.example".into()), route: Some("pg".into()), ..Filter::default() };
        assert!(f.matches(&view, now));
        assert!(!f.matches(&a.view(), now));
        for t in ["db.internal:5432", "10.0.0.2:5432"] {
            assert!(Filter { target: Some(t.into()), ..Filter::default() }.matches(&view, now), "{t}");
        }
        assert!(!Filter { target: Some("10.0.0.3:5432".into()), ..Filter::default() }.matches(&view, now));
        let old = Filter { older_than: Some(Duration::from_secs(60)), ..Filter::default() };
        assert!(!old.matches(&view, now));
        assert!(old.matches(&view, now + 61_000));
        assert!(Filter { client: "127.0.0.0/8".parse().ok(), ..Filter::default() }.matches(&view, now));
        assert!(!Filter { client: "10.0.0.0/8".parse().ok(), ..Filter::default() }.matches(&view, now));
        assert!(Filter::default().is_empty() && !f.is_empty());
        let id = b.id();
        assert!(reg.get(id).is_some());
        drop(b);
        assert!(reg.get(id).is_none(), "an ended session leaves the registry");
        assert_eq!(reg.all().len(), 1);
    }

    #[test]
    fn ids_are_unique_across_generations() {
        let g1 = Registry::new(1);
        let g2 = Registry::new(2);
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let f = || accepted(addr, "l".into(), addr, Protocol::Tcp);
        let a = g1.register(f(), Arc::default(), None);
        let b = g2.register(f(), Arc::default(), None);
        assert_ne!(a.id(), b.id());
        // A moved session keeps its id in the next generation.
        let moved = g2.register(f(), Arc::default(), Some((a.id(), SystemTime::now())));
        assert_eq!(moved.id(), a.id());
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn a_registry_entry_stays_small() {
        // Every open session has one: with the Arc's two counters it is
        // allocated in mimalloc's 320-byte class (bench/README.md, idle
        // memory). What only some sessions have is boxed apart (`More`).
        let entry = std::mem::size_of::<super::Live>() + 16;
        assert!(entry <= 320, "a registry entry grew to {entry} bytes (at most 320)");
    }
}
