//! One upstream as one snapshot sees it: its settings and weights, and the
//! balancing tables built from the healthy addresses (rebuilt by the
//! upstream's background task when an address or a health state changes).
//! A session picks addresses from them, one per attempt, and reports each
//! attempt's outcome back ([`Attempt`]): that feeds the passive health
//! checks and the latency algorithm.
//!
//! A pick loads the current tables and walks them; no lock, no allocation.
//! Addresses that turned unhealthy since the tables were built are skipped,
//! and a session is never refused on the word of tables that are behind.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use strait_model::{Algorithm, HashOn, Healthchecks};
use uuid::Uuid;

use crate::balancer;
use crate::health::{Event, Thresholds};
use crate::report::split_target;
use crate::shared::{Endpoint, InUse, Shared, TargetState};

#[derive(Debug)]
pub(crate) struct TargetEntry {
    pub(crate) state: Arc<TargetState>,
    pub(crate) weight: u16,
    pub(crate) id: Option<Uuid>,
    pub(crate) created_at: Option<i64>,
    pub(crate) updated_at: Option<i64>,
    pub(crate) tags: Vec<String>,
}

/// An upstream as one snapshot sees it.
#[derive(Debug)]
pub struct Balanced {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: String,
    pub(crate) id: Option<Uuid>,
    pub(crate) algorithm: Algorithm,
    pub(crate) slots: u32,
    pub(crate) hash_on: HashOn,
    pub(crate) hash_fallback: HashOn,
    pub(crate) use_srv_name: bool,
    pub(crate) hc: Healthchecks,
    pub(crate) active_thresholds: Thresholds,
    pub(crate) passive_thresholds: Thresholds,
    pub(crate) targets: Vec<TargetEntry>,
    /// TLS for `tls`/`https` probes.
    pub(crate) probe_tls: Option<Arc<ClientConfig>>,
    pub(crate) plan: ArcSwap<Plan>,
    pub(crate) rr: AtomicUsize,
    /// Every target has been resolved once: sessions need not wait.
    pub(crate) resolved: AtomicBool,
}

/// The balancing tables for one epoch: only healthy addresses of targets
/// with a weight.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) epoch: u64,
    pub(crate) entries: Vec<(Arc<Endpoint>, u32)>,
    pub(crate) schedule: Vec<u32>,
    pub(crate) ring: Vec<u32>,
    pub(crate) total_weight: u64,
    pub(crate) healthy_weight: u64,
}

/// Why no address could be chosen, in Kong's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failure to get a peer from the ring-balancer ('{upstream}'): {why}")]
pub struct NoPeer {
    pub upstream: String,
    pub why: String,
}

impl Balanced {
    pub(crate) fn new(
        shared: Arc<Shared>,
        name: String,
        id: Option<Uuid>,
        up: &strait_model::Upstream,
        targets: Vec<TargetEntry>,
        probe_tls: Option<Arc<ClientConfig>>,
    ) -> Arc<Balanced> {
        let hc = up.healthchecks.clone();
        let b = Balanced {
            active_thresholds: Thresholds::new(&hc.active.healthy, &hc.active.unhealthy),
            passive_thresholds: Thresholds::new(&hc.passive.healthy, &hc.passive.unhealthy),
            shared,
            name,
            id,
            algorithm: up.algorithm,
            slots: up.slots,
            hash_on: up.hash_on,
            hash_fallback: up.hash_fallback,
            use_srv_name: up.use_srv_name,
            hc,
            targets,
            probe_tls,
            plan: ArcSwap::from_pointee(Plan::default()),
            rr: AtomicUsize::new(0),
            resolved: AtomicBool::new(false),
        };
        b.plan.store(Arc::new(b.build_plan()));
        Arc::new(b)
    }

    /// No address for a session, and why.
    pub fn no_peer(&self, why: impl Into<String>) -> NoPeer {
        NoPeer { upstream: self.name.clone(), why: why.into() }
    }

    pub(crate) fn build_plan(&self) -> Plan {
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        let mut plan = Plan { epoch, ..Plan::default() };
        // A draining target counts as one without a weight.
        for t in self.targets.iter().filter(|t| t.weight > 0 && !t.state.is_draining()) {
            for ep in t.state.endpoints.load().iter() {
                let w = ep.weight(t.weight);
                plan.total_weight += u64::from(w);
                if ep.health.is_healthy() {
                    plan.healthy_weight += u64::from(w);
                    plan.entries.push((ep.clone(), w));
                }
            }
        }
        let weights: Vec<u32> = plan.entries.iter().map(|(_, w)| *w).collect();
        match self.algorithm {
            Algorithm::RoundRobin => plan.schedule = balancer::schedule(&weights),
            Algorithm::ConsistentHashing => {
                let keys: Vec<u64> =
                    plan.entries.iter().map(|(e, _)| balancer::hash64(e.addr.to_string().as_bytes())).collect();
                plan.ring = balancer::ring(&keys, &weights, self.slots);
            }
            Algorithm::LeastConnections | Algorithm::Latency => {}
        }
        plan
    }

    /// Rebuilds the tables if an address or a health state changed since
    /// they were built. Called by the upstream's background task, never by
    /// a session on its way to a pick.
    pub(crate) fn refresh_plan(&self) {
        if self.plan.load().epoch != self.shared.epoch.load(Ordering::Acquire) {
            self.plan.store(Arc::new(self.build_plan()));
        }
    }

    /// Waits (at most `timeout`) until every target with a weight has been
    /// resolved once, so the first sessions after a change see all addresses.
    pub async fn ready(&self, timeout: Duration) {
        if self.resolved.load(Ordering::Acquire) {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        for t in self.targets.iter().filter(|t| t.weight > 0 && !t.state.literal) {
            let mut rx = t.state.resolved.subscribe();
            if *rx.borrow() {
                continue;
            }
            if tokio::time::timeout_at(deadline, rx.wait_for(|v| *v)).await.is_err() {
                // A slow name server: later sessions do not wait again.
                break;
            }
        }
        self.resolved.store(true, Ordering::Release);
    }

    /// Starts choosing addresses for one session.
    pub fn picker(&self, client: IpAddr) -> Result<Picker<'_>, NoPeer> {
        let mut plan = self.plan.load_full();
        let mut stale = plan.epoch != self.shared.epoch.load(Ordering::Acquire);
        if stale && self.refuses(&plan) {
            // The tables are behind (a target just resolved or recovered):
            // never refuse a session on their word alone.
            plan = Arc::new(self.build_plan());
            stale = false;
        }
        if plan.entries.is_empty() {
            let why = if self.targets.iter().all(|t| t.weight == 0) {
                "the upstream has no targets with a weight".to_owned()
            } else if self.targets.iter().all(|t| t.weight == 0 || t.state.is_draining()) {
                "every target with a weight is draining".to_owned()
            } else if plan.total_weight == 0 {
                let errors: Vec<String> =
                    self.targets.iter().filter_map(|t| t.state.dns.lock().ok()?.error.clone()).collect();
                if errors.is_empty() { "no target has an address yet".to_owned() } else { errors.join("; ") }
            } else {
                "every target is unhealthy".to_owned()
            };
            return Err(self.no_peer(why));
        }
        if self.hc.threshold > 0.0 {
            // Health may have changed since the tables were built: the
            // threshold is judged on the weights as they are now.
            let (healthy, total) = if stale { self.weights() } else { (plan.healthy_weight, plan.total_weight) };
            if !self.above_threshold(healthy, total) {
                return Err(self.no_peer(format!(
                    "healthy weight {healthy} of {total} is below the upstream's threshold of {}%",
                    self.hc.threshold
                )));
            }
        }
        let hash = (self.algorithm == Algorithm::ConsistentHashing
            && (self.hash_on == HashOn::Ip || self.hash_fallback == HashOn::Ip))
            .then(|| match client {
                IpAddr::V4(v4) => balancer::hash64(&v4.octets()),
                IpAddr::V6(v6) => balancer::hash64(&v6.octets()),
            });
        Ok(Picker { b: self, plan, hash, pos: None, tried: Tried::default() })
    }

    /// Healthy and total weight as of now (the tables may be behind).
    pub(crate) fn weights(&self) -> (u64, u64) {
        let (mut healthy, mut total) = (0u64, 0u64);
        for t in self.targets.iter().filter(|t| t.weight > 0 && !t.state.is_draining()) {
            for ep in t.state.endpoints.load().iter() {
                let w = u64::from(ep.weight(t.weight));
                total += w;
                if ep.health.is_healthy() {
                    healthy += w;
                }
            }
        }
        (healthy, total)
    }

    /// The tables would refuse a session: nothing in them is healthy now.
    fn refuses(&self, plan: &Plan) -> bool {
        !plan.entries.iter().any(|(e, _)| e.available())
            || !self.above_threshold(plan.healthy_weight, plan.total_weight)
    }

    pub(crate) fn above_threshold(&self, healthy: u64, total: u64) -> bool {
        self.hc.threshold <= 0.0 || (healthy as f64) * 100.0 >= self.hc.threshold * total as f64
    }

    /// A session's connect attempt ended; passive checks count it.
    fn observe(&self, ep: &Endpoint, event: Event, detail: &str) {
        if !self.hc.passive_enabled() {
            return;
        }
        if let Some(healthy) = ep.health.report(event, &self.passive_thresholds, detail) {
            tracing::warn!(upstream = %self.name, addr = %ep.addr, healthy, reason = detail, "passive health check changed an address's health");
            self.shared.bump();
            self.went_down(ep, healthy);
        }
    }

    /// An active probe's result.
    pub(crate) fn probed(&self, ep: &Endpoint, event: Event, detail: &str) {
        if let Some(healthy) = ep.health.report(event, &self.active_thresholds, detail) {
            tracing::warn!(upstream = %self.name, addr = %ep.addr, healthy, reason = detail, "active health check changed an address's health");
            self.shared.bump();
            self.went_down(ep, healthy);
        }
    }

    /// Health checks marked `ep` down: told to whoever closes its sessions.
    fn went_down(&self, ep: &Endpoint, healthy: bool) {
        if let (false, Some(upstream)) = (healthy, self.id) {
            let _ = self.shared.downs.send(crate::Down { upstream, addr: ep.addr, target: ep.target.clone() });
        }
    }

    pub(crate) fn find_target(&self, t: &str) -> Option<&TargetEntry> {
        if let Ok(id) = t.parse::<Uuid>() {
            return self.targets.iter().find(|e| e.id == Some(id));
        }
        let (host, port) = split_target(t)?;
        self.targets.iter().find(|e| e.state.host == host && e.state.port == port)
    }
}

/// Chooses addresses for one session: the first, then one per retry.
#[derive(Debug)]
pub struct Picker<'a> {
    b: &'a Balanced,
    plan: Arc<Plan>,
    pub(crate) hash: Option<u64>,
    /// Position in the schedule or ring of the last pick.
    pos: Option<usize>,
    tried: Tried,
}

/// The entries a session already tried: inline for the usual few retries,
/// so a pick allocates nothing.
#[derive(Debug, Default)]
struct Tried {
    inline: [usize; 8],
    len: usize,
    more: Vec<usize>,
}

impl Tried {
    fn push(&mut self, i: usize) {
        if self.len < self.inline.len() {
            self.inline[self.len] = i;
            self.len += 1;
        } else {
            self.more.push(i);
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.inline[..self.len].contains(&i) || self.more.contains(&i)
    }
}

/// The addresses to try, one per attempt.
impl<'a> Iterator for Picker<'a> {
    type Item = Attempt<'a>;

    /// The next address to try, with a hold on it for the session.
    fn next(&mut self) -> Option<Attempt<'a>> {
        let i = match self.b.algorithm {
            Algorithm::RoundRobin => self.walk(false),
            Algorithm::ConsistentHashing => self.walk(true),
            Algorithm::LeastConnections => self.least(|ep, _| f64::from(ep.active.load(Ordering::Relaxed)) + 1.0),
            Algorithm::Latency => self.least(|ep, _| {
                let ewma = ep.ewma_us.load(Ordering::Relaxed);
                // Unmeasured addresses go first, so every address gets measured.
                if ewma == 0 { 0.0 } else { ewma as f64 * (f64::from(ep.active.load(Ordering::Relaxed)) + 1.0) }
            }),
        }?;
        self.tried.push(i);
        let ep = self.plan.entries[i].0.clone();
        Some(Attempt { b: self.b, hold: InUse::new(ep) })
    }
}

impl Picker<'_> {
    fn usable(&self, i: usize, allow_tried: bool) -> bool {
        self.plan.entries[i].0.available() && (allow_tried || !self.tried.contains(i))
    }

    /// Round-robin over the schedule, or a walk along the ring from the
    /// client's slot (or a rotating one when there is nothing to hash).
    fn walk(&mut self, ring: bool) -> Option<usize> {
        let table = if ring { &self.plan.ring } else { &self.plan.schedule };
        let len = table.len();
        if len == 0 {
            return None;
        }
        let start = match (self.pos, self.hash) {
            (Some(p), _) => p + 1,
            (None, Some(h)) if ring => (h % len as u64) as usize,
            (None, _) => self.b.rr.fetch_add(1, Ordering::Relaxed) % len,
        };
        for allow_tried in [false, true] {
            for k in 0..len {
                let p = (start + k) % len;
                let i = table[p] as usize;
                if self.usable(i, allow_tried) {
                    self.pos = Some(p);
                    return Some(i);
                }
            }
        }
        None
    }

    /// The usable entry with the lowest `cost / weight`; ties go round-robin.
    fn least(&mut self, cost: impl Fn(&Endpoint, u32) -> f64) -> Option<usize> {
        let n = self.plan.entries.len();
        let start = self.b.rr.fetch_add(1, Ordering::Relaxed) % n.max(1);
        for allow_tried in [false, true] {
            let mut best: Option<(f64, usize)> = None;
            for k in 0..n {
                let i = (start + k) % n;
                if !self.usable(i, allow_tried) {
                    continue;
                }
                let (ep, w) = &self.plan.entries[i];
                let score = cost(ep, *w) / f64::from((*w).max(1));
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, i));
                }
            }
            if let Some((_, i)) = best {
                return Some(i);
            }
        }
        None
    }
}

/// One attempt on a picked address. The session says how it went, and that
/// is what the passive health checks and the latency algorithm learn from;
/// meanwhile (and after a success, until the session ends) it counts as a
/// session open on the address, for least-connections.
#[derive(Debug)]
#[must_use = "an attempt's outcome feeds the health checks: call `succeeded`, `opened` or `failed`"]
pub struct Attempt<'a> {
    b: &'a Balanced,
    hold: InUse,
}

impl Attempt<'_> {
    #[inline]
    pub fn addr(&self) -> SocketAddr {
        self.hold.0.addr
    }

    /// The name to send as SNI and verify: the SRV record's target with
    /// `use_srv_name`, else the target's host name (`None` for an IP target).
    #[inline]
    pub fn server_name(&self) -> Option<&str> {
        self.hold.0.sni_name(self.b.use_srv_name)
    }

    /// Connected after `took`: one more session on the address, one latency
    /// sample, a success for passive checks. The session keeps the returned
    /// hold until it ends.
    pub fn succeeded(self, took: Duration) -> InUse {
        let ep = &self.hold.0;
        ep.sessions.fetch_add(1, Ordering::Relaxed);
        ep.record_connect(took);
        self.b.observe(ep, Event::Success, "connected");
        self.hold
    }

    /// A session opened without a connection to time (UDP): counted, but no
    /// latency sample and nothing for passive checks (a UDP "connect"
    /// learns nothing of the upstream).
    pub fn opened(self) -> InUse {
        self.hold.0.sessions.fetch_add(1, Ordering::Relaxed);
        self.hold
    }

    /// Failed with `event` (`detail` says how): passive checks count it, and
    /// for the latency algorithm it cost `penalty` (the connect timeout), so
    /// a refusing address is not taken for a fast one.
    pub fn failed(self, event: Event, detail: &str, penalty: Duration) {
        let ep = &self.hold.0;
        ep.record_connect(penalty);
        self.b.observe(ep, event, detail);
    }
}
