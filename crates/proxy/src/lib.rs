//! Strait's data path: listeners, sessions (TCP and UDP), TLS termination
//! and passthrough, upstream connections, the relay loop, the compiled
//! snapshot and the access log.
//!
//! A [`Proxy`] runs on the caller's tokio runtime. It reads configuration
//! only through an atomically swapped [`Snapshot`]; it knows nothing of
//! files, stores or HTTP. Plugins come in through the kit (`strait-plugin`),
//! balancing through `strait-upstream`, parsers from `strait-wire`. See
//! `docs/LIFECYCLE.md` for one session's path through it.

pub mod access_log;
mod connect;
mod filtered;
pub mod handoff;
mod listener;
pub mod live;
pub mod relay;
mod rewind;
mod session;
pub mod snapshot;
mod splice;
mod stages;
pub mod targets;
mod tester;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

pub use access_log::{AccessLogWriter, AccessLogger};
pub use handoff::{Adopter, Adoption, Carried, Flow, Handed, MoveError, Moving};
pub use listener::{BindError, BoundListener, Inherited, ListenerInfo, bind_all, bind_all_inheriting, listen_key};
pub use snapshot::{CompileError, CompiledRoute, CompiledService, Destination, Snapshot};
use strait_plugin::SessionCounts;
pub use tester::{Probe, RouteTester};

/// Timeouts that apply to every session, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub preread: Duration,
    pub tls_detect: Duration,
    /// `drain_timeout`: how long the sessions of a target removed with
    /// `on_target_removed: drain` may go on.
    pub drain: Duration,
}

/// Session settings that are not timeouts.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// Peers allowed to send a PROXY protocol header (`trusted_ips`).
    pub trusted_ips: Vec<ipnet::IpNet>,
    /// Most UDP sessions one listener keeps at once.
    pub udp_max_sessions: usize,
    /// Most bytes data-phase plugins may hold per direction of a session.
    pub stream_max_pending: usize,
    /// This process is an upgrade's next generation: its UDP listeners read
    /// their sockets only once the previous generation's flows are in.
    pub adopting: bool,
    /// This process's generation: its sessions' ids are numbered from it.
    pub generation: u64,
}

/// The settings a session reads as it is set up: swapped whole by
/// [`Proxy::retune`] (a reload), read without a lock.
#[derive(Debug, Clone)]
pub(crate) struct Tunables {
    pub(crate) preread: Duration,
    pub(crate) tls_detect: Duration,
    pub(crate) drain: Duration,
    pub(crate) trusted_ips: Vec<ipnet::IpNet>,
    pub(crate) stream_max_pending: usize,
}

impl Tunables {
    fn new(timeouts: Timeouts, options: &SessionOptions) -> Tunables {
        Tunables {
            preread: timeouts.preread,
            tls_detect: timeouts.tls_detect,
            drain: timeouts.drain,
            trusted_ips: options.trusted_ips.clone(),
            stream_max_pending: options.stream_max_pending,
        }
    }
}

/// State shared by every session of one listener: the proxy's common
/// state, and the listener's own close signal (a listener removed by a
/// reload drains and closes its sessions alone).
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: Arc<ArcSwap<Snapshot>>,
    stats: Arc<Stats>,
    log: AccessLogger,
    tunables: Arc<ArcSwap<Tunables>>,
    udp_max_sessions: usize,
    force_close: Arc<ForceClose>,
    /// Where sessions handed over go, once an upgrade is under way.
    handoff: Arc<std::sync::OnceLock<std::sync::mpsc::Sender<Handed>>>,
    sessions: Arc<live::Registry>,
}

impl Shared {
    /// The current tunables; hold the guard only for a statement.
    pub(crate) fn tun(&self) -> arc_swap::Guard<Arc<Tunables>> {
        self.tunables.load()
    }
}

/// The signal that closes every open session at once. A session waits on it
/// with a `Notify` waiter (64 bytes) rather than a `watch` receiver's
/// `wait_for` future (144): it is part of every idle session's state. The
/// waiters are spread over a few `Notify`s, as registering and dropping one
/// takes its lock.
#[derive(Debug, Default)]
pub(crate) struct ForceClose {
    set: AtomicBool,
    /// An upgrade: sessions that can be handed over stop and are.
    handoff: AtomicBool,
    /// The listener stopped accepting and its sessions drain.
    draining: AtomicBool,
    notify: [Notify; 8],
}

thread_local! {
    /// Which of the `Notify`s this thread's next waiter uses.
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl ForceClose {
    fn close_all(&self) {
        self.set.store(true, Ordering::SeqCst);
        for n in &self.notify {
            n.notify_waiters();
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::SeqCst)
    }

    /// Asks every relaying session that can move to stop and be handed over.
    fn hand_off(&self) {
        self.handoff.store(true, Ordering::SeqCst);
        for n in &self.notify {
            n.notify_waiters();
        }
    }

    pub(crate) fn handing_off(&self) -> bool {
        self.handoff.load(Ordering::Acquire)
    }

    fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A waiter to create *before* checking [`is_set`](Self::is_set): a
    /// `close_all` after its creation completes it even if it was never
    /// polled, one before is seen by the check.
    pub(crate) fn waiter(&self) -> tokio::sync::futures::Notified<'_> {
        let i = SHARD.with(|s| {
            let i = s.get();
            s.set(i.wrapping_add(1));
            i
        });
        self.notify[i % self.notify.len()].notified()
    }

    /// Completes once every session is to be closed, or `live` alone is
    /// (killed through the Admin API): true for the latter.
    pub(crate) async fn closed_or_killed(&self, live: &live::Live) -> bool {
        loop {
            let mut waiter = std::pin::pin!(self.waiter());
            if self.is_set() {
                return false;
            }
            // The task's waker is left with the session once: a kill wakes
            // this task alone, which then sees the flag.
            let mut left = false;
            let killed = std::future::poll_fn(|cx| {
                if !left {
                    live.wake_on_kill(cx.waker());
                    left = true;
                }
                if live.killed() {
                    return std::task::Poll::Ready(true);
                }
                waiter.as_mut().poll(cx).map(|()| false)
            })
            .await;
            if killed || self.is_set() {
                return killed;
            }
        }
    }
}

/// The close signals of every listener's sessions, running or draining.
#[derive(Debug, Default)]
struct Signals(std::sync::Mutex<Vec<Arc<ForceClose>>>);

impl Signals {
    fn add(&self, f: Arc<ForceClose>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A listener's signal stays until the listener is gone and its
        // sessions with it (only its holders here and in `Running`).
        all.retain(|f| Arc::strong_count(f) > 1 && !f.is_set());
        all.push(f);
    }

    fn close_all(&self) {
        for f in self.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f.close_all();
        }
    }
}

/// Closes every session when the last of the proxy and its [`Closer`]s is
/// dropped, so that a proxy dropped without [`Proxy::shutdown`] does not
/// leave sessions running.
#[derive(Debug, Default)]
struct CloseOnDrop(Signals);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_all();
    }
}

/// What every listener's sessions share, from which each listener's
/// [`Shared`] is made.
#[derive(Debug)]
struct Common {
    snapshot: Arc<ArcSwap<Snapshot>>,
    stats: Arc<Stats>,
    log: AccessLogger,
    tunables: Arc<ArcSwap<Tunables>>,
    udp_max_sessions: usize,
    handoff: Arc<std::sync::OnceLock<std::sync::mpsc::Sender<Handed>>>,
    /// An upgrade's next generation: its first UDP listeners wait for the
    /// previous generation's flows.
    adopting: bool,
    sessions: Arc<live::Registry>,
    /// The listeners accepting, for the route tester.
    listening: Arc<std::sync::RwLock<Vec<Arc<ListenerInfo>>>>,
    targets: Arc<targets::Targets>,
}

/// One listener accepting (or stopped, its sessions still open).
#[derive(Debug)]
struct Running {
    info: Arc<ListenerInfo>,
    /// A duplicate of the listening socket, for an upgrade's hand-off;
    /// dropped when the listener is removed, so that its port closes.
    socket: Option<std::os::fd::OwnedFd>,
    force_close: Arc<ForceClose>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    /// `recv` gives `None` once the accept loop and every session are gone.
    alive: mpsc::Receiver<()>,
    /// For sessions an earlier generation hands over, while it accepts.
    joinable: handoff::Joinable,
}

impl Running {
    /// Stops accepting; the sessions go on.
    async fn stop_accepting(&mut self) {
        self.socket = None;
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Stops accepting, lets the sessions finish for up to `drain`, then
    /// closes the rest and waits (5 s at most) for their log lines. True
    /// when some had to be closed.
    async fn drain(mut self, drain: Duration) -> bool {
        self.force_close.drain();
        self.stop_accepting().await;
        if tokio::time::timeout(drain, self.alive.recv()).await.is_ok() {
            return false;
        }
        self.force_close.close_all();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.alive.recv()).await;
        true
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    common: Common,
    signals: Arc<CloseOnDrop>,
    listeners: Vec<Running>,
    /// Listeners a reload removed, draining in the background.
    retiring: Vec<JoinHandle<bool>>,
}

/// Publishes snapshots to a running proxy; see [`Proxy::swapper`].
#[derive(Debug, Clone)]
pub struct Swapper(Arc<ArcSwap<Snapshot>>, Arc<targets::Targets>);

impl Swapper {
    pub fn swap(&self, snapshot: Snapshot) {
        snapshot.activate();
        let old = self.0.swap(Arc::new(snapshot));
        // Sessions of targets this change removed go as their upstream says.
        self.1.config_changed(&old.config, &self.0.load().config);
    }
}

/// Session counters: one relaxed atomic add per session start and end.
#[derive(Debug, Default)]
pub struct Stats {
    accepted: std::sync::atomic::AtomicU64,
    handled: std::sync::atomic::AtomicU64,
}

impl Stats {
    pub(crate) fn session_started(&self) {
        self.accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub(crate) fn session_ended(&self) {
        self.handled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn snapshot(&self) -> SessionCounts {
        let handled = self.handled.load(std::sync::atomic::Ordering::Relaxed);
        let accepted = self.accepted.load(std::sync::atomic::Ordering::Relaxed);
        SessionCounts { accepted, handled, active: accepted.saturating_sub(handled) }
    }

    /// Carries an earlier generation's totals over (an upgrade): `/status`
    /// and `/metrics` go on counting from them. Its sessions still open
    /// count as accepted and not yet handled, here as there.
    pub fn carry_over(&self, earlier: SessionCounts) {
        self.accepted.fetch_add(earlier.accepted, std::sync::atomic::Ordering::Relaxed);
        self.handled.fetch_add(earlier.handled, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Closes every open session of a proxy; see [`Proxy::closer`].
#[derive(Debug, Clone)]
pub struct Closer(Arc<CloseOnDrop>);

impl Closer {
    pub fn close_all(&self) {
        self.0.0.close_all();
    }
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions were still open at the drain deadline, and were closed.
    pub forced: bool,
    /// How many were closed so.
    pub closed: u64,
}

impl Proxy {
    /// Starts accepting on `listeners`. Must be called inside a tokio runtime.
    pub fn start(
        listeners: Vec<BoundListener>,
        snapshot: Snapshot,
        log: AccessLogger,
        timeouts: Timeouts,
        options: SessionOptions,
    ) -> std::io::Result<Proxy> {
        snapshot.activate();
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let tunables = Arc::new(ArcSwap::from_pointee(Tunables::new(timeouts, &options)));
        let sessions = live::Registry::new(options.generation);
        let targets = targets::Targets::new(sessions.clone(), snapshot.clone(), tunables.clone());
        targets.watch_downs();
        let common = Common {
            snapshot,
            stats: Arc::new(Stats::default()),
            log,
            tunables,
            udp_max_sessions: options.udp_max_sessions.max(1),
            handoff: Arc::default(),
            adopting: options.adopting,
            sessions,
            listening: Arc::default(),
            targets,
        };
        let mut proxy = Proxy { common, signals: Arc::default(), listeners: Vec::new(), retiring: Vec::new() };
        proxy.add(listeners)?;
        // Listeners added later (a reload) have no earlier generation's flows.
        proxy.common.adopting = false;
        Ok(proxy)
    }

    /// Starts accepting on more listeners (a reload's new `stream_listen`
    /// entries, or those an upgrade handed over).
    pub fn add(&mut self, listeners: Vec<BoundListener>) -> std::io::Result<()> {
        for bound in listeners {
            let info = Arc::new(bound.info);
            let socket = bound.socket.duplicate()?;
            let force_close = Arc::new(ForceClose::default());
            self.signals.0.add(force_close.clone());
            let shared = Arc::new(Shared {
                snapshot: self.common.snapshot.clone(),
                stats: self.common.stats.clone(),
                log: self.common.log.clone(),
                tunables: self.common.tunables.clone(),
                udp_max_sessions: self.common.udp_max_sessions,
                force_close: force_close.clone(),
                handoff: self.common.handoff.clone(),
                sessions: self.common.sessions.clone(),
            });
            let (stop, stop_rx) = watch::channel(false);
            let (alive_tx, alive) = mpsc::channel(1);
            let mut joinable = handoff::Joinable {
                key: info.key.clone(),
                shared: shared.clone(),
                alive: alive_tx.downgrade(),
                flows: None,
                gate: None,
            };
            tracing::info!(listener = %info.label, addr = %info.addr, ssl = info.ssl, udp = info.udp, "stream listener ready");
            let task = match bound.socket {
                listener::BoundSocket::Tcp(l) => tokio::spawn(listener::accept_loop(
                    tokio::net::TcpListener::from_std(l)?,
                    info.clone(),
                    shared,
                    stop_rx,
                    alive_tx,
                )),
                listener::BoundSocket::Udp(s) => {
                    let (flows, adopted) = mpsc::unbounded_channel();
                    // Only a socket the previous generation read has its flows to wait for.
                    let (gate, gate_rx) = watch::channel(!(self.common.adopting && bound.inherited));
                    joinable.flows = Some(flows);
                    joinable.gate = Some(Arc::new(gate));
                    tokio::spawn(udp::run(
                        Arc::new(tokio::net::UdpSocket::from_std(s)?),
                        info.clone(),
                        shared,
                        stop_rx,
                        alive_tx,
                        adopted,
                        gate_rx,
                    ))
                }
            };
            let socket = Some(socket);
            self.listeners.push(Running { info, socket, force_close, stop, task: Some(task), alive, joinable });
            self.publish_listeners();
        }
        Ok(())
    }

    /// Stops the listeners `which` selects: they accept nothing more, and
    /// their sessions drain for up to `drain` in the background. Gives
    /// their labels.
    pub fn retire(&mut self, which: impl Fn(&ListenerInfo) -> bool, drain: Duration) -> Vec<String> {
        let (gone, kept): (Vec<Running>, Vec<Running>) = self.listeners.drain(..).partition(|r| which(&r.info));
        self.listeners = kept;
        self.publish_listeners();
        let mut labels = Vec::new();
        for r in gone {
            labels.push(r.info.label.to_string());
            tracing::info!(listener = %r.info.label, "stream listener removed: its sessions drain");
            self.retiring.push(tokio::spawn(r.drain(drain)));
        }
        labels
    }

    /// The listeners accepting now, in the order they were added.
    pub fn listeners(&self) -> impl Iterator<Item = &ListenerInfo> {
        self.listeners.iter().map(|r| &*r.info)
    }

    /// The listening sockets with what they listen for, for an upgrade's
    /// hand-off (the same sockets: connections queued on them are not lost).
    pub fn sockets(&self) -> impl Iterator<Item = (&ListenerInfo, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd;
        self.listeners.iter().filter_map(|r| Some((&*r.info, r.socket.as_ref()?.as_fd())))
    }

    /// Stops every listener accepting; open sessions go on (an upgrade, once
    /// the next generation accepts on the same sockets).
    pub async fn stop_accepting(&mut self) {
        for r in &mut self.listeners {
            r.stop_accepting().await;
        }
    }

    /// An upgrade: every relaying plain and passthrough session stops
    /// reading and leaves through `to`; the others go on here (call after
    /// [`stop_accepting`](Self::stop_accepting), then drain).
    pub fn hand_off(&self, to: std::sync::mpsc::Sender<Handed>) {
        let _ = self.common.handoff.set(to);
        for f in self.signals.0.0.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f.hand_off();
        }
    }

    /// Takes sessions an earlier generation hands over, into these
    /// listeners (must be called inside the runtime).
    pub fn adopter(&self) -> Adopter {
        Adopter {
            listeners: self.listeners.iter().map(|r| r.joinable.clone()).collect(),
            runtime: tokio::runtime::Handle::current(),
            stay: false,
        }
    }

    /// Swaps the settings sessions read as they are set up (a reload).
    pub fn retune(&self, timeouts: Timeouts, options: &SessionOptions) {
        self.common.tunables.store(Arc::new(Tunables::new(timeouts, options)));
    }

    /// A handle that closes every open session at once (e.g. on a second
    /// SIGTERM during a drain).
    pub fn closer(&self) -> Closer {
        Closer(self.signals.clone())
    }

    /// The addresses actually bound, in the order the listeners were added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|r| r.info.addr).collect()
    }

    /// A handle that publishes snapshots, for the control plane. It holds
    /// nothing else of the proxy, so it never keeps the proxy alive.
    pub fn swapper(&self) -> Swapper {
        Swapper(self.common.snapshot.clone(), self.common.targets.clone())
    }

    fn publish_listeners(&self) {
        let infos = self.listeners.iter().map(|r| r.info.clone()).collect();
        *self.common.listening.write().unwrap_or_else(|p| p.into_inner()) = infos;
    }

    /// The route tester, on the configuration and listeners in use.
    pub fn tester(&self) -> RouteTester {
        RouteTester {
            snapshot: self.common.snapshot.clone(),
            tunables: self.common.tunables.clone(),
            listening: self.common.listening.clone(),
        }
    }

    /// Target drains and what sessions do when their target goes.
    pub fn targets(&self) -> Arc<targets::Targets> {
        self.common.targets.clone()
    }

    /// The open sessions, for the Admin API.
    pub fn sessions(&self) -> Arc<live::Registry> {
        self.common.sessions.clone()
    }

    /// Session counters, for `/status`.
    pub fn stats(&self) -> Arc<Stats> {
        self.common.stats.clone()
    }

    /// Stops accepting, lets open sessions finish for up to `drain`, then
    /// closes the rest and waits (5 s at most) for their log lines.
    pub async fn shutdown(mut self, drain: Duration) -> DrainReport {
        let retiring: Vec<JoinHandle<bool>> = self.retiring.drain(..).collect();
        for r in &self.listeners {
            r.force_close.drain();
        }
        self.stop_accepting().await;
        let stats = self.common.stats.clone();
        let mut listeners = std::mem::take(&mut self.listeners);
        let all_ended = async {
            for r in &mut listeners {
                let _ = r.alive.recv().await;
            }
        };
        let mut report = DrainReport { forced: false, closed: 0 };
        if tokio::time::timeout(drain, all_ended).await.is_err() {
            report.forced = true;
            let at_deadline = stats.snapshot().handled;
            tracing::info!("drain_timeout reached: closing the remaining sessions");
            self.signals.0.close_all();
            let ended = async {
                for r in &mut listeners {
                    let _ = r.alive.recv().await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
            report.closed = stats.snapshot().handled.saturating_sub(at_deadline);
        }
        for r in retiring {
            report.forced |= r.await.unwrap_or(true);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_all_completes_waiters_on_every_shard_made_before_or_after() {
        let live = live::test_entry();
        let force = live.force();
        // More waiters than shards, made before the signal and never polled.
        let before: Vec<_> = (0..20).map(|_| force.waiter()).collect();
        assert!(!force.is_set());
        force.close_all();
        for w in before {
            tokio::time::timeout(Duration::from_secs(5), w).await.expect("a waiter made before close_all completes");
        }
        // After the signal, a session's wait sees the flag.
        let killed = tokio::time::timeout(Duration::from_secs(5), force.closed_or_killed(&live)).await;
        assert_eq!(killed.ok(), Some(false), "closed, not killed");
    }

    #[tokio::test]
    async fn dropping_the_proxy_and_its_closers_closes_every_session() {
        let force = Arc::new(ForceClose::default());
        let held = Arc::new(CloseOnDrop::default());
        held.0.add(force.clone());
        let closer = Closer(held.clone());
        let waiter = force.waiter();
        drop(held);
        assert!(!force.is_set(), "a Closer still alive keeps sessions open");
        drop(closer);
        assert!(force.is_set(), "the last holder gone: every session is closed");
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("waiting sessions are woken");
    }
}
