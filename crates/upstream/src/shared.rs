//! What outlives configuration changes, per upstream: its targets, the
//! addresses each target's name resolves to, and each address's health and
//! session counters. Kept in the process-wide registry ([`crate::Upstreams`])
//! by upstream id, so a change that leaves a target alone leaves its state alone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::{Notify, watch};

use crate::balanced::Balanced;
use crate::dns;
use crate::health::Health;

/// One upstream's state that outlives configuration changes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) key: String,
    /// Bumped whenever an address appears, disappears or changes health.
    pub(crate) epoch: AtomicU64,
    /// The current targets by `(host, port)`, for reuse by the next compile.
    pub(crate) targets: Mutex<HashMap<(String, u16), Arc<TargetState>>>,
    /// The active snapshot's view of this upstream, for the worker and the
    /// Admin API. Cleared when the upstream is removed.
    pub(crate) current: ArcSwapOption<Balanced>,
    pub(crate) wake: Notify,
    pub(crate) started: AtomicBool,
    pub(crate) retired: AtomicBool,
    /// Where health checks tell that an address went down.
    pub(crate) downs: tokio::sync::broadcast::Sender<crate::Down>,
}

/// One target (`host:port`) and what its name resolves to.
#[derive(Debug)]
pub(crate) struct TargetState {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// The host is an IP address: nothing to resolve.
    pub(crate) literal: bool,
    pub(crate) endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    pub(crate) dns: Mutex<DnsState>,
    /// Turns true after the first resolution attempt.
    pub(crate) resolved: watch::Sender<bool>,
    /// A resolution is running.
    pub(crate) refreshing: AtomicBool,
    /// Drained through the Admin API: it takes no new sessions. Its
    /// addresses mirror it (`Endpoint::draining`) for the picks.
    pub(crate) draining: AtomicBool,
}

#[derive(Debug, Default)]
pub(crate) struct DnsState {
    /// When to ask again; `None` before the first attempt.
    pub(crate) refresh_at: Option<Instant>,
    /// The last good answer may serve until then while refreshes fail.
    pub(crate) stale_until: Option<Instant>,
    pub(crate) error: Option<String>,
    pub(crate) source: &'static str,
}

/// One address of a target.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// The target it belongs to, as `host:port` (what sessions list).
    pub(crate) target: Arc<str>,
    /// The target's host name (for upstream SNI), unless it is an IP address.
    pub(crate) hostname: Option<Arc<str>>,
    /// The SRV record's target name, used as SNI with `use_srv_name`.
    pub(crate) srv_name: Option<Arc<str>>,
    /// The SRV record's weight; 0 when the address did not come from SRV.
    pub(crate) srv_weight: AtomicU32,
    pub(crate) health: Health,
    /// Sessions open on this address now.
    pub(crate) active: AtomicU32,
    /// Sessions ever opened on this address.
    pub(crate) sessions: AtomicU64,
    /// Moving average of connect time in microseconds; 0 = no sample yet.
    pub(crate) ewma_us: AtomicU64,
    /// Its target is draining (set from [`TargetState::set_draining`]).
    pub(crate) draining: AtomicBool,
}

impl Endpoint {
    pub(crate) fn new(
        addr: SocketAddr,
        target: Arc<str>,
        hostname: Option<Arc<str>>,
        srv: Option<(u16, Arc<str>)>,
    ) -> Endpoint {
        Endpoint {
            addr,
            target,
            hostname,
            srv_weight: AtomicU32::new(srv.as_ref().map_or(0, |(w, _)| u32::from(*w))),
            srv_name: srv.map(|(_, n)| n),
            health: Health::default(),
            active: AtomicU32::new(0),
            sessions: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// Healthy and not draining: a pick may take it.
    #[inline]
    pub(crate) fn available(&self) -> bool {
        self.health.is_healthy() && !self.draining.load(Ordering::Relaxed)
    }

    /// The address's weight: the SRV record's, else the target's.
    pub(crate) fn weight(&self, target: u16) -> u32 {
        match self.srv_weight.load(Ordering::Relaxed) {
            0 => u32::from(target),
            w => w,
        }
    }

    /// The name to send as SNI: the SRV target with `use_srv_name`, else the
    /// target's host name.
    pub(crate) fn sni_name(&self, use_srv_name: bool) -> Option<&str> {
        if use_srv_name { self.srv_name.as_deref().or(self.hostname.as_deref()) } else { self.hostname.as_deref() }
    }

    pub(crate) fn record_connect(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u32::MAX)) as u64 + 1;
        let _ = self.ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { sample } else { (old * 3 + sample) / 4 })
        });
    }
}

/// Holds one session's place on an address (least-connections, metrics).
#[derive(Debug)]
pub struct InUse(pub(crate) Arc<Endpoint>);

impl InUse {
    pub(crate) fn new(ep: Arc<Endpoint>) -> InUse {
        ep.active.fetch_add(1, Ordering::Relaxed);
        InUse(ep)
    }

    /// The target (`host:port`) of the address in use.
    pub fn target(&self) -> &Arc<str> {
        &self.0.target
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    /// The target's state: the one in use when the target is unchanged, a
    /// new one otherwise.
    pub(crate) fn target(&self, host: &str, port: u16) -> Arc<TargetState> {
        let key = (host.to_ascii_lowercase(), port);
        if let Some(t) = self.targets.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return t.clone();
        }
        let bare = host.trim_matches(|c| c == '[' || c == ']');
        let literal = bare.parse::<IpAddr>().ok();
        let endpoints = literal.map_or_else(Vec::new, |ip| {
            vec![Arc::new(Endpoint::new(SocketAddr::new(ip, port), format!("{}:{port}", key.0).into(), None, None))]
        });
        let (resolved, _) = watch::channel(literal.is_some());
        Arc::new(TargetState {
            host: key.0,
            port,
            literal: literal.is_some(),
            endpoints: ArcSwap::from_pointee(endpoints),
            dns: Mutex::new(DnsState::default()),
            resolved,
            refreshing: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        })
    }

    pub(crate) fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

impl TargetState {
    /// Installs a new set of addresses, keeping the state of those that stay
    /// (matched by address alone, so a new SRV weight keeps the health).
    /// Returns whether the set or a weight changed; the order of a DNS answer
    /// does not count.
    pub(crate) fn set_endpoints(&self, addrs: &[dns::Resolved]) -> bool {
        let old = self.endpoints.load();
        let hostname: Arc<str> = Arc::from(self.host.as_str());
        let target: Arc<str> = target_key(&self.host, self.port).into();
        let mut sorted: Vec<&dns::Resolved> = addrs.iter().collect();
        sorted.sort_by_key(|r| r.addr);
        sorted.dedup_by_key(|r| r.addr);
        let mut changed = sorted.len() != old.len();
        let next: Vec<Arc<Endpoint>> = sorted
            .iter()
            .map(|r| match old.iter().find(|e| e.addr == r.addr) {
                Some(e) => {
                    let w = r.weight.map_or(0, u32::from);
                    if e.srv_weight.swap(w, Ordering::Relaxed) != w {
                        changed = true;
                    }
                    e.clone()
                }
                None => {
                    changed = true;
                    let srv = r.weight.map(|w| (w, Arc::from(r.name.as_deref().unwrap_or(self.host.as_str()))));
                    let ep = Endpoint::new(r.addr, target.clone(), Some(hostname.clone()), srv);
                    ep.draining.store(self.is_draining(), Ordering::Relaxed);
                    Arc::new(ep)
                }
            })
            .collect();
        if changed {
            self.endpoints.store(Arc::new(next));
        }
        changed
    }
}

impl TargetState {
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or ends a drain; true when that changed anything.
    pub(crate) fn set_draining(&self, on: bool) -> bool {
        let changed = self.draining.swap(on, Ordering::Relaxed) != on;
        for ep in self.endpoints.load().iter() {
            ep.draining.store(on, Ordering::Relaxed);
        }
        changed
    }
}

/// A target as sessions name it (`host:port`, the host lower case): the
/// one spelling the registry of sessions and the drains share.
pub fn target_key(host: &str, port: u16) -> String {
    format!("{}:{port}", host.to_ascii_lowercase())
}
