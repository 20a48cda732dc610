//! Upstreams in the data path: targets resolved through DNS into addresses,
//! each address balanced and health-checked on its own.
//!
//! Three layers, by lifetime:
//! - [`Upstreams`], one per process: the DNS client and a registry of
//!   per-upstream [`Shared`] state, keyed by upstream id (or by `host:port`
//!   for a service whose host is a plain name).
//! - [`Shared`] lives as long as the upstream exists, across configuration
//!   changes: the targets' resolved addresses, their health and session
//!   counters, and the one background task that re-resolves names and runs
//!   active probes. A change that leaves a target alone leaves its state alone.
//! - [`Balanced`], one per upstream per snapshot: the upstream's settings and
//!   weights as that snapshot says, and the balancing tables, rebuilt by the
//!   background task when the shared state's epoch moves (an address or a
//!   health change).
//!
//! A pick loads the current tables and walks them; no lock, no allocation.
//! Addresses that turned unhealthy since the tables were built are skipped,
//! and a session is never refused on the word of tables that are behind.

mod balancer;
mod checker;
pub mod dns;
mod health;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::ClientConfig;
use strait_config::DnsSettings;
use strait_model::{Algorithm, Config, HashOn, Healthchecks, UpstreamIdx};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

pub use dns::Dns;
pub(crate) use health::Event;
use health::{Health, Thresholds};

/// Every upstream's shared state, and the DNS client. One per process.
#[derive(Debug)]
pub struct Upstreams {
    dns: Arc<Dns>,
    registry: Mutex<HashMap<String, Arc<Shared>>>,
}

/// One upstream's state that outlives configuration changes.
#[derive(Debug)]
pub(crate) struct Shared {
    key: String,
    /// Bumped whenever an address appears, disappears or changes health.
    epoch: AtomicU64,
    /// The current targets by `(host, port)`, for reuse by the next compile.
    targets: Mutex<HashMap<(String, u16), Arc<TargetState>>>,
    /// The active snapshot's view of this upstream, for the worker and the
    /// Admin API. Cleared when the upstream is removed.
    current: ArcSwapOption<Balanced>,
    wake: Notify,
    started: AtomicBool,
    retired: AtomicBool,
}

/// One target (`host:port`) and what its name resolves to.
#[derive(Debug)]
pub(crate) struct TargetState {
    host: String,
    port: u16,
    /// The host is an IP address: nothing to resolve.
    literal: bool,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    dns: Mutex<DnsState>,
    /// Turns true after the first resolution attempt.
    resolved: watch::Sender<bool>,
    /// A resolution is running.
    refreshing: AtomicBool,
}

#[derive(Debug, Default)]
struct DnsState {
    /// When to ask again; `None` before the first attempt.
    refresh_at: Option<Instant>,
    /// The last good answer may serve until then while refreshes fail.
    stale_until: Option<Instant>,
    error: Option<String>,
    source: &'static str,
}

/// One address of a target.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// The target's host name (for upstream SNI), unless it is an IP address.
    pub(crate) hostname: Option<Arc<str>>,
    /// The SRV record's target name, used as SNI with `use_srv_name`.
    srv_name: Option<Arc<str>>,
    /// The SRV record's weight; 0 when the address did not come from SRV.
    srv_weight: AtomicU32,
    health: Health,
    /// Sessions open on this address now.
    active: AtomicU32,
    /// Sessions ever opened on this address.
    sessions: AtomicU64,
    /// Moving average of connect time in microseconds; 0 = no sample yet.
    ewma_us: AtomicU64,
}

impl Endpoint {
    fn new(addr: SocketAddr, hostname: Option<Arc<str>>, srv: Option<(u16, Arc<str>)>) -> Endpoint {
        Endpoint {
            addr,
            hostname,
            srv_weight: AtomicU32::new(srv.as_ref().map_or(0, |(w, _)| u32::from(*w))),
            srv_name: srv.map(|(_, n)| n),
            health: Health::default(),
            active: AtomicU32::new(0),
            sessions: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
        }
    }

    /// The address's weight: the SRV record's, else the target's.
    fn weight(&self, target: u16) -> u32 {
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

    fn record_connect(&self, took: Duration) {
        let sample = took.as_micros().min(u128::from(u32::MAX)) as u64 + 1;
        let _ = self.ewma_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            Some(if old == 0 { sample } else { (old * 3 + sample) / 4 })
        });
    }
}

/// Holds one session's place on an address (least-connections, metrics).
#[derive(Debug)]
pub(crate) struct InUse(Arc<Endpoint>);

impl InUse {
    fn new(ep: Arc<Endpoint>) -> InUse {
        ep.active.fetch_add(1, Ordering::Relaxed);
        InUse(ep)
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct TargetEntry {
    state: Arc<TargetState>,
    weight: u16,
    id: Option<Uuid>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
    tags: Vec<String>,
}

/// An upstream as one snapshot sees it.
#[derive(Debug)]
pub struct Balanced {
    shared: Arc<Shared>,
    name: String,
    id: Option<Uuid>,
    algorithm: Algorithm,
    slots: u32,
    hash_on: HashOn,
    hash_fallback: HashOn,
    use_srv_name: bool,
    hc: Healthchecks,
    active_thresholds: Thresholds,
    passive_thresholds: Thresholds,
    targets: Vec<TargetEntry>,
    /// TLS for `tls`/`https` probes.
    probe_tls: Option<Arc<ClientConfig>>,
    plan: ArcSwap<Plan>,
    rr: AtomicUsize,
    /// Every target has been resolved once: sessions need not wait.
    resolved: AtomicBool,
}

/// The balancing tables for one epoch: only healthy addresses of targets
/// with a weight.
#[derive(Debug, Default)]
struct Plan {
    epoch: u64,
    entries: Vec<(Arc<Endpoint>, u32)>,
    schedule: Vec<u32>,
    ring: Vec<u32>,
    total_weight: u64,
    healthy_weight: u64,
}

/// Why no address could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NoPeer(pub String);

impl Upstreams {
    pub fn new(dns: DnsSettings) -> Upstreams {
        Upstreams { dns: Arc::new(Dns::new(dns)), registry: Mutex::new(HashMap::new()) }
    }

    fn shared(&self, key: &str) -> Arc<Shared> {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.get(key).cloned().unwrap_or_else(|| {
            Arc::new(Shared {
                key: key.to_owned(),
                epoch: AtomicU64::new(1),
                targets: Mutex::new(HashMap::new()),
                current: ArcSwapOption::empty(),
                wake: Notify::new(),
                started: AtomicBool::new(false),
                retired: AtomicBool::new(false),
            })
        })
    }

    /// The upstream entity `u` for a snapshot being compiled. Nothing runs
    /// until the snapshot is activated.
    pub(crate) fn prepare(
        &self,
        config: &Config,
        u: UpstreamIdx,
        probe_tls: Option<Arc<ClientConfig>>,
    ) -> Arc<Balanced> {
        let up = &config.upstreams[u.0];
        let shared = self.shared(&format!("upstream:{}", up.meta.id));
        let targets = config
            .targets
            .iter()
            .filter(|t| t.upstream == u)
            .map(|t| TargetEntry {
                state: shared.target(&t.host, t.port),
                weight: t.weight,
                id: Some(t.meta.id),
                created_at: t.meta.created_at,
                updated_at: t.meta.updated_at,
                tags: t.meta.tags.clone(),
            })
            .collect();
        Balanced::new(shared, up.name.clone(), Some(up.meta.id), up, targets, probe_tls)
    }

    /// A service whose host is a plain DNS name: an implicit upstream with
    /// one target, round-robin over its addresses, no health checks (as Kong).
    pub(crate) fn prepare_host(&self, host: &str, port: u16) -> Arc<Balanced> {
        let shared = self.shared(&format!("host:{host}:{port}"));
        let state = shared.target(host, port);
        let targets =
            vec![TargetEntry { state, weight: 100, id: None, created_at: None, updated_at: None, tags: Vec::new() }];
        let up = strait_model::Upstream {
            meta: strait_model::Meta { id: Uuid::nil(), tags: Vec::new(), created_at: None, updated_at: None },
            name: host.to_owned(),
            algorithm: Algorithm::RoundRobin,
            slots: 10_000,
            hash_on: HashOn::None,
            hash_fallback: HashOn::None,
            host_header: None,
            client_certificate: None,
            healthchecks: Healthchecks::default(),
            use_srv_name: false,
            extra: Default::default(),
        };
        Balanced::new(shared, host.to_owned(), None, &up, targets, None)
    }

    /// Makes `balancers` the live set: starts their workers, retires the
    /// upstreams no longer configured. Called when a snapshot goes live.
    pub(crate) fn activate(&self, balancers: &[Arc<Balanced>]) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::with_capacity(balancers.len());
        for b in balancers {
            let shared = &b.shared;
            let targets = b.targets.iter().map(|t| ((t.state.host.clone(), t.state.port), t.state.clone())).collect();
            *shared.targets.lock().unwrap_or_else(|p| p.into_inner()) = targets;
            shared.current.store(Some(b.clone()));
            shared.epoch.fetch_add(1, Ordering::AcqRel);
            if !shared.started.load(Ordering::Acquire) {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    shared.started.store(true, Ordering::Release);
                    handle.spawn(checker::run(shared.clone(), self.dns.clone()));
                }
            }
            shared.wake.notify_one();
            next.insert(shared.key.clone(), shared.clone());
        }
        for (key, old) in registry.drain() {
            if !next.contains_key(&key) {
                old.retired.store(true, Ordering::Release);
                old.current.store(None);
                old.wake.notify_one();
            }
        }
        *registry = next;
    }

    fn find(&self, upstream: Uuid) -> Option<Arc<Balanced>> {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.get(&format!("upstream:{upstream}"))?.current.load_full()
    }

    /// The health of every target and address of an upstream, for the Admin API.
    pub fn health(&self, upstream: Uuid) -> Option<UpstreamHealth> {
        Some(self.find(upstream)?.report())
    }

    /// Every live upstream's health (for metrics).
    pub fn all_health(&self) -> Vec<UpstreamHealth> {
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.values().filter_map(|s| s.current.load_full()).filter(|b| b.id.is_some()).map(|b| b.report()).collect()
    }

    /// Marks a target (every address, or just `address`) healthy or unhealthy
    /// by hand. Health checks may change it again later, as in Kong.
    pub fn set_health(
        &self,
        upstream: Uuid,
        target: &str,
        address: Option<&str>,
        healthy: bool,
    ) -> Result<(), SetHealthError> {
        let b = self.find(upstream).ok_or(SetHealthError::UpstreamNotFound)?;
        let entry = b.find_target(target).ok_or(SetHealthError::TargetNotFound)?;
        // As Kong: without health checks there is no health to set.
        if !b.hc.enabled() {
            return Err(SetHealthError::NoHealthchecker(b.name.clone()));
        }
        let endpoints = entry.state.endpoints.load();
        if endpoints.is_empty() {
            return Err(SetHealthError::NoAddress);
        }
        let chosen: Vec<&Arc<Endpoint>> = match address {
            None => endpoints.iter().collect(),
            Some(a) => {
                let addr = parse_address(a).ok_or(SetHealthError::AddressNotFound)?;
                let found: Vec<_> = endpoints.iter().filter(|e| e.addr == addr).collect();
                if found.is_empty() {
                    return Err(SetHealthError::AddressNotFound);
                }
                found
            }
        };
        let reason =
            if healthy { "marked healthy through the Admin API" } else { "marked unhealthy through the Admin API" };
        let mut changed = false;
        for ep in chosen {
            changed |= ep.health.set(healthy, reason.to_owned());
        }
        if changed {
            tracing::warn!(upstream = %b.name, target, healthy, "target health set through the Admin API");
            b.shared.epoch.fetch_add(1, Ordering::AcqRel);
            b.shared.wake.notify_one();
        }
        Ok(())
    }
}

impl Drop for Upstreams {
    /// Ends every background task and breaks the `Shared` ⇄ `Balanced` links.
    fn drop(&mut self) {
        let registry = self.registry.get_mut().unwrap_or_else(|p| p.into_inner());
        for shared in registry.values() {
            shared.retired.store(true, Ordering::Release);
            shared.current.store(None);
            shared.wake.notify_one();
        }
    }
}

/// `ip:port` or `[ipv6]:port`.
fn parse_address(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

/// Why a manual health change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetHealthError {
    /// The upstream has no active or passive health checks (Kong's 400).
    #[error("no healthchecker found for {0}")]
    NoHealthchecker(String),
    #[error("upstream not found")]
    UpstreamNotFound,
    #[error("target not found")]
    TargetNotFound,
    #[error("address not found")]
    AddressNotFound,
    #[error("the target has no resolved address")]
    NoAddress,
}

impl Shared {
    /// The target's state: the one in use when the target is unchanged, a
    /// new one otherwise.
    fn target(&self, host: &str, port: u16) -> Arc<TargetState> {
        let key = (host.to_ascii_lowercase(), port);
        if let Some(t) = self.targets.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return t.clone();
        }
        let bare = host.trim_matches(|c| c == '[' || c == ']');
        let literal = bare.parse::<IpAddr>().ok();
        let endpoints =
            literal.map_or_else(Vec::new, |ip| vec![Arc::new(Endpoint::new(SocketAddr::new(ip, port), None, None))]);
        let (resolved, _) = watch::channel(literal.is_some());
        Arc::new(TargetState {
            host: key.0,
            port,
            literal: literal.is_some(),
            endpoints: ArcSwap::from_pointee(endpoints),
            dns: Mutex::new(DnsState::default()),
            resolved,
            refreshing: AtomicBool::new(false),
        })
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

impl TargetState {
    /// Installs a new set of addresses, keeping the state of those that stay
    /// (matched by address alone, so a new SRV weight keeps the health).
    /// Returns whether the set or a weight changed; the order of a DNS answer
    /// does not count.
    fn set_endpoints(&self, addrs: &[dns::Resolved]) -> bool {
        let old = self.endpoints.load();
        let hostname: Arc<str> = Arc::from(self.host.as_str());
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
                    Arc::new(Endpoint::new(r.addr, Some(hostname.clone()), srv))
                }
            })
            .collect();
        if changed {
            self.endpoints.store(Arc::new(next));
        }
        changed
    }
}

impl Balanced {
    fn new(
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

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn use_srv_name(&self) -> bool {
        self.use_srv_name
    }

    fn build_plan(&self) -> Plan {
        let epoch = self.shared.epoch.load(Ordering::Acquire);
        let mut plan = Plan { epoch, ..Plan::default() };
        for t in self.targets.iter().filter(|t| t.weight > 0) {
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
    pub(crate) async fn ready(&self, timeout: Duration) {
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
    pub(crate) fn picker(&self, client: IpAddr) -> Result<Picker<'_>, NoPeer> {
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
            } else if plan.total_weight == 0 {
                let errors: Vec<String> =
                    self.targets.iter().filter_map(|t| t.state.dns.lock().ok()?.error.clone()).collect();
                if errors.is_empty() { "no target has an address yet".to_owned() } else { errors.join("; ") }
            } else {
                "every target is unhealthy".to_owned()
            };
            return Err(NoPeer(why));
        }
        if self.hc.threshold > 0.0 {
            // Health may have changed since the tables were built: the
            // threshold is judged on the weights as they are now.
            let (healthy, total) = if stale { self.weights() } else { (plan.healthy_weight, plan.total_weight) };
            if !self.above_threshold(healthy, total) {
                return Err(NoPeer(format!(
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
    fn weights(&self) -> (u64, u64) {
        let (mut healthy, mut total) = (0u64, 0u64);
        for t in self.targets.iter().filter(|t| t.weight > 0) {
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
        !plan.entries.iter().any(|(e, _)| e.health.is_healthy())
            || !self.above_threshold(plan.healthy_weight, plan.total_weight)
    }

    fn above_threshold(&self, healthy: u64, total: u64) -> bool {
        self.hc.threshold <= 0.0 || (healthy as f64) * 100.0 >= self.hc.threshold * total as f64
    }

    /// A session's connect attempt ended; passive checks count it.
    pub(crate) fn observe(&self, ep: &Endpoint, event: Event, detail: &str) {
        if !self.hc.passive_enabled() {
            return;
        }
        if let Some(healthy) = ep.health.report(event, &self.passive_thresholds, detail) {
            tracing::warn!(upstream = %self.name, addr = %ep.addr, healthy, reason = detail, "passive health check changed an address's health");
            self.shared.bump();
        }
    }

    /// An active probe's result.
    fn probed(&self, ep: &Endpoint, event: Event, detail: &str) {
        if let Some(healthy) = ep.health.report(event, &self.active_thresholds, detail) {
            tracing::warn!(upstream = %self.name, addr = %ep.addr, healthy, reason = detail, "active health check changed an address's health");
            self.shared.bump();
        }
    }

    fn find_target(&self, t: &str) -> Option<&TargetEntry> {
        if let Ok(id) = t.parse::<Uuid>() {
            return self.targets.iter().find(|e| e.id == Some(id));
        }
        let (host, port) = split_target(t)?;
        self.targets.iter().find(|e| e.state.host == host && e.state.port == port)
    }

    fn report(&self) -> UpstreamHealth {
        let enabled = self.hc.enabled();
        let (healthy_weight, total_weight) = self.weights();
        let mut targets = Vec::with_capacity(self.targets.len());
        for t in &self.targets {
            let dns = t.state.dns.lock().unwrap_or_else(|p| p.into_inner());
            let addresses: Vec<AddressHealth> = t
                .state
                .endpoints
                .load()
                .iter()
                .map(|ep| {
                    let view = ep.health.view();
                    AddressHealth {
                        addr: ep.addr,
                        weight: ep.weight(t.weight),
                        health: match (view.healthy, enabled) {
                            (true, false) => "HEALTHCHECKS_OFF",
                            (true, true) => "HEALTHY",
                            (false, _) => "UNHEALTHY",
                        },
                        reason: view.reason,
                        since: view.since,
                        active_sessions: ep.active.load(Ordering::Relaxed),
                        sessions: ep.sessions.load(Ordering::Relaxed),
                        connect_time_ewma: Duration::from_micros(ep.ewma_us.load(Ordering::Relaxed)),
                    }
                })
                .collect();
            let health = if addresses.is_empty() && dns.error.is_some() {
                "DNS_ERROR"
            } else if addresses.iter().any(|a| a.health == "HEALTHY") {
                "HEALTHY"
            } else if addresses.iter().any(|a| a.health == "HEALTHCHECKS_OFF") || addresses.is_empty() && !enabled {
                "HEALTHCHECKS_OFF"
            } else {
                "UNHEALTHY"
            };
            targets.push(TargetHealth {
                id: t.id,
                created_at: t.created_at,
                updated_at: t.updated_at,
                tags: t.tags.clone(),
                target: authority(&t.state.host, t.state.port),
                weight: t.weight,
                health,
                dns_source: (!t.state.literal).then_some(dns.source).filter(|s| !s.is_empty()),
                dns_error: dns.error.clone(),
                addresses,
            });
        }
        // No weight at all refuses sessions too.
        let healthy = healthy_weight > 0 && self.above_threshold(healthy_weight, total_weight);
        UpstreamHealth {
            id: self.id.unwrap_or_default(),
            name: self.name.clone(),
            // Refusing sessions is reported even when no checks run (after
            // manual overrides).
            health: if !healthy {
                "UNHEALTHY"
            } else if !enabled {
                "HEALTHCHECKS_OFF"
            } else {
                "HEALTHY"
            },
            threshold: self.hc.threshold,
            total_weight,
            available_weight: healthy_weight,
            targets,
        }
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

/// `host[:port]` as in a target (default port 8000), host lower-cased.
fn split_target(t: &str) -> Option<(String, u16)> {
    if let Ok(sa) = t.parse::<SocketAddr>() {
        return Some((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = t.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        return Some((ip.to_string(), 8000));
    }
    match t.rsplit_once(':') {
        Some((h, p)) => Some((h.to_ascii_lowercase(), p.parse().ok()?)),
        None => Some((t.to_ascii_lowercase(), 8000)),
    }
}

/// Chooses addresses for one session: the first, then one per retry.
#[derive(Debug)]
pub(crate) struct Picker<'a> {
    b: &'a Balanced,
    plan: Arc<Plan>,
    hash: Option<u64>,
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

impl Picker<'_> {
    /// The next address to try, with a hold on it for the session.
    pub(crate) fn next(&mut self) -> Option<(Arc<Endpoint>, InUse)> {
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
        Some((ep.clone(), InUse::new(ep)))
    }

    fn usable(&self, i: usize, allow_tried: bool) -> bool {
        self.plan.entries[i].0.health.is_healthy() && (allow_tried || !self.tried.contains(i))
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

/// A connect attempt succeeded: one more session, one latency sample.
pub(crate) fn connected(ep: &Endpoint, took: Duration) {
    ep.sessions.fetch_add(1, Ordering::Relaxed);
    ep.record_connect(took);
}

/// A session opened on the address without a connect to time (UDP).
pub(crate) fn session_opened(ep: &Endpoint) {
    ep.sessions.fetch_add(1, Ordering::Relaxed);
}

/// A connect attempt failed: for the latency algorithm it cost `penalty`
/// (the connect timeout), so a refusing address is not taken for a fast one.
pub(crate) fn failed(ep: &Endpoint, penalty: Duration) {
    ep.record_connect(penalty);
}

/// An upstream's health, as `GET /upstreams/{u}/health` shows it.
#[derive(Debug, Clone)]
pub struct UpstreamHealth {
    pub id: Uuid,
    pub name: String,
    /// `HEALTHY`, `UNHEALTHY` (below `threshold` or nothing healthy) or `HEALTHCHECKS_OFF`.
    pub health: &'static str,
    pub threshold: f64,
    pub total_weight: u64,
    pub available_weight: u64,
    pub targets: Vec<TargetHealth>,
}

#[derive(Debug, Clone)]
pub struct TargetHealth {
    pub id: Option<Uuid>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    pub tags: Vec<String>,
    pub target: String,
    pub weight: u16,
    /// `HEALTHY`, `UNHEALTHY`, `DNS_ERROR` or `HEALTHCHECKS_OFF`.
    pub health: &'static str,
    /// Where the addresses came from: `A`, `AAAA`, `SRV`, `hosts`.
    pub dns_source: Option<&'static str>,
    pub dns_error: Option<String>,
    pub addresses: Vec<AddressHealth>,
}

#[derive(Debug, Clone)]
pub struct AddressHealth {
    pub addr: SocketAddr,
    pub weight: u32,
    pub health: &'static str,
    /// Why the address is in its state (the last health change).
    pub reason: Option<String>,
    pub since: Option<SystemTime>,
    pub active_sessions: u32,
    pub sessions: u64,
    pub connect_time_ewma: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(algorithm: &str) -> Config {
        let yaml = format!(
            "_format_version: \"3.0\"\nupstreams:\n- name: pool\n  algorithm: {algorithm}\n  healthchecks: {{passive: {{unhealthy: {{tcp_failures: 3}}}}}}\n  targets:\n  - {{target: 10.0.0.1:80, weight: 100}}\n  - {{target: 10.0.0.2:80, weight: 300}}\n  - {{target: 10.0.0.3:80, weight: 0}}\n"
        );
        strait_model::load_str(&yaml).unwrap().config
    }

    fn upstreams() -> Arc<Upstreams> {
        Arc::new(Upstreams::new(DnsSettings { hostsfile: "/dev/null".into(), ..DnsSettings::default() }))
    }

    #[tokio::test]
    async fn picks_follow_health_and_retries_try_each_address_once() {
        let ups = upstreams();
        let config = config("round-robin");
        let b = ups.prepare(&config, UpstreamIdx(0), None);
        ups.activate(std::slice::from_ref(&b));
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let mut p = b.picker(client).unwrap();
        let first = p.next().unwrap().0.addr;
        let second = p.next().unwrap().0.addr;
        assert_ne!(first, second, "a retry moves to another address");
        // Weight 0 is never picked; with both tried, retries repeat.
        assert!(p.next().unwrap().0.addr.port() == 80);

        // The metrics hook and the Admin API see the same state.
        let id = config.upstreams[0].meta.id;
        ups.set_health(id, "10.0.0.2:80", None, false).unwrap();
        assert_eq!(ups.set_health(id, "10.0.0.9:80", None, false), Err(SetHealthError::TargetNotFound));
        assert_eq!(ups.set_health(id, "10.0.0.1:80", Some("10.0.0.1:81"), false), Err(SetHealthError::AddressNotFound));
        let all = ups.all_health();
        assert_eq!(all.len(), 1);
        let h = &all[0];
        assert_eq!((h.total_weight, h.available_weight), (400, 100));
        let health: Vec<&str> = h.targets.iter().map(|t| t.health).collect();
        assert_eq!(health, ["HEALTHY", "UNHEALTHY", "HEALTHY"]);
        for _ in 0..10 {
            let mut p = b.picker(client).unwrap();
            assert_eq!(p.next().unwrap().0.addr, "10.0.0.1:80".parse().unwrap(), "the unhealthy address is skipped");
        }
        ups.set_health(id, "10.0.0.1:80", None, false).unwrap();
        assert!(b.picker(client).is_err(), "nothing healthy: no peer");

        // Without health checks, Kong's refusal.
        let plain = strait_model::load_str(
            "_format_version: \"3.0\"\nupstreams:\n- name: bare\n  targets: [{target: 10.0.0.1:80}]\n",
        )
        .unwrap()
        .config;
        let bare = ups.prepare(&plain, UpstreamIdx(0), None);
        ups.activate(&[bare]);
        assert_eq!(
            ups.set_health(plain.upstreams[0].meta.id, "10.0.0.1:80", None, false),
            Err(SetHealthError::NoHealthchecker("bare".into()))
        );
    }

    #[tokio::test]
    async fn consistent_hashing_is_stable_per_client_and_least_connections_counts_sessions() {
        let ups = upstreams();
        let b = ups.prepare(&config("consistent-hashing"), UpstreamIdx(0), None);
        let b_ip = ups.prepare(&config("least-connections"), UpstreamIdx(0), None);
        drop(ups);
        // hash_on none: no hash, so round-robin over the ring.
        assert!(b.picker("192.0.2.1".parse().unwrap()).unwrap().hash.is_none());
        let mut held = Vec::new();
        for _ in 0..4 {
            let (ep, hold) = b_ip.picker("192.0.2.1".parse().unwrap()).unwrap().next().unwrap();
            held.push((ep.addr, hold));
        }
        // Weights 100 and 300: least-connections per unit of weight puts
        // three of four open sessions on the heavier address.
        let heavy = held.iter().filter(|(a, _)| a.ip().to_string() == "10.0.0.2").count();
        assert_eq!(heavy, 3, "{:?}", held.iter().map(|(a, _)| a).collect::<Vec<_>>());
    }
}
