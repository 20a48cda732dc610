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
mod listener;
pub mod relay;
mod rewind;
mod session;
pub mod snapshot;
mod splice;
mod stages;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

pub use access_log::{AccessLogWriter, AccessLogger};
pub use listener::{BindError, BoundListener, ListenerInfo, bind_all};
pub use snapshot::{CompileError, CompiledRoute, CompiledService, Destination, Snapshot};
use strait_plugin::SessionCounts;

/// Timeouts that apply to every session, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub preread: Duration,
    pub tls_detect: Duration,
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
}

/// State shared by every session of a proxy.
#[derive(Debug)]
pub(crate) struct Shared {
    snapshot: Arc<ArcSwap<Snapshot>>,
    stats: Arc<Stats>,
    log: AccessLogger,
    preread_timeout: Duration,
    tls_detect_timeout: Duration,
    trusted_ips: Vec<ipnet::IpNet>,
    udp_max_sessions: usize,
    stream_max_pending: usize,
    force_close: Arc<ForceClose>,
}

/// The signal that closes every open session at once. A session waits on it
/// with a `Notify` waiter (64 bytes) rather than a `watch` receiver's
/// `wait_for` future (144): it is part of every idle session's state. The
/// waiters are spread over a few `Notify`s, as registering and dropping one
/// takes its lock.
#[derive(Debug, Default)]
pub(crate) struct ForceClose {
    set: AtomicBool,
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

    /// Completes once every session is to be closed.
    pub(crate) async fn closed(&self) {
        let waiter = self.waiter();
        if self.is_set() {
            return;
        }
        waiter.await;
    }
}

/// Closes every session when the last of the proxy and its [`Closer`]s is
/// dropped, so that a proxy dropped without [`Proxy::shutdown`] does not
/// leave sessions running.
#[derive(Debug)]
struct CloseOnDrop(Arc<ForceClose>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_all();
    }
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    stop_accept: watch::Sender<bool>,
    force_close: Arc<CloseOnDrop>,
    accept_tasks: Vec<JoinHandle<()>>,
    alive_rx: mpsc::Receiver<()>,
    addrs: Vec<SocketAddr>,
}

/// Publishes snapshots to a running proxy; see [`Proxy::swapper`].
#[derive(Debug, Clone)]
pub struct Swapper(Arc<ArcSwap<Snapshot>>);

impl Swapper {
    pub fn swap(&self, snapshot: Snapshot) {
        snapshot.activate();
        self.0.store(Arc::new(snapshot));
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
    /// Sessions still open at the drain deadline, closed by force.
    pub forced: bool,
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
        let (stop_accept, stop_rx) = watch::channel(false);
        let force_close = Arc::new(ForceClose::default());
        let (alive_tx, alive_rx) = mpsc::channel(1);
        snapshot.activate();
        let shared = Arc::new(Shared {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            stats: Arc::new(Stats::default()),
            log,
            preread_timeout: timeouts.preread,
            tls_detect_timeout: timeouts.tls_detect,
            trusted_ips: options.trusted_ips,
            udp_max_sessions: options.udp_max_sessions.max(1),
            stream_max_pending: options.stream_max_pending,
            force_close: force_close.clone(),
        });
        let mut accept_tasks = Vec::new();
        let mut addrs = Vec::new();
        for bound in listeners {
            let info = Arc::new(bound.info);
            addrs.push(info.addr);
            tracing::info!(listener = %info.label, addr = %info.addr, ssl = info.ssl, udp = info.udp, "stream listener ready");
            let task = match bound.socket {
                listener::BoundSocket::Tcp(l) => tokio::spawn(listener::accept_loop(
                    tokio::net::TcpListener::from_std(l)?,
                    info,
                    shared.clone(),
                    stop_rx.clone(),
                    alive_tx.clone(),
                )),
                listener::BoundSocket::Udp(s) => tokio::spawn(udp::run(
                    Arc::new(tokio::net::UdpSocket::from_std(s)?),
                    info,
                    shared.clone(),
                    stop_rx.clone(),
                    alive_tx.clone(),
                )),
            };
            accept_tasks.push(task);
        }
        let force_close = Arc::new(CloseOnDrop(force_close));
        Ok(Proxy { shared, stop_accept, force_close, accept_tasks, alive_rx, addrs })
    }

    /// A handle that closes every open session at once (e.g. on a second
    /// SIGTERM during a drain).
    pub fn closer(&self) -> Closer {
        Closer(self.force_close.clone())
    }

    /// The addresses actually bound, in `stream_listen` order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle that publishes snapshots, for the control plane. It holds
    /// nothing else of the proxy, so it never keeps the proxy alive.
    pub fn swapper(&self) -> Swapper {
        Swapper(self.shared.snapshot.clone())
    }

    /// Session counters, for `/status`.
    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    /// Stops accepting, lets open sessions finish for up to `drain`, then
    /// closes the rest and waits for their log lines.
    pub async fn shutdown(mut self, drain: Duration) -> DrainReport {
        let _ = self.stop_accept.send(true);
        for t in self.accept_tasks.drain(..) {
            let _ = t.await;
        }
        // Every session holds a sender; `recv` yields `None` once all are gone.
        let mut forced = false;
        if tokio::time::timeout(drain, self.alive_rx.recv()).await.is_err() {
            forced = true;
            tracing::info!("drain_timeout reached: closing the remaining sessions");
            self.force_close.0.close_all();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.alive_rx.recv()).await;
        }
        DrainReport { forced }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn close_all_completes_waiters_on_every_shard_made_before_or_after() {
        let force = ForceClose::default();
        // More waiters than shards, made before the signal and never polled.
        let before: Vec<_> = (0..20).map(|_| force.waiter()).collect();
        assert!(!force.is_set());
        force.close_all();
        for w in before {
            tokio::time::timeout(Duration::from_secs(5), w).await.expect("a waiter made before close_all completes");
        }
        // After the signal, `closed` sees the flag.
        tokio::time::timeout(Duration::from_secs(5), force.closed()).await.expect("closed() after close_all");
    }

    #[tokio::test]
    async fn dropping_the_proxy_and_its_closers_closes_every_session() {
        let force = Arc::new(ForceClose::default());
        let held = Arc::new(CloseOnDrop(force.clone()));
        let closer = Closer(held.clone());
        let waiter = force.waiter();
        drop(held);
        assert!(!force.is_set(), "a Closer still alive keeps sessions open");
        drop(closer);
        assert!(force.is_set(), "the last holder gone: every session is closed");
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("waiting sessions are woken");
    }
}
