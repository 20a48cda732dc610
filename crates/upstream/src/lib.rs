//! Strait's upstreams: targets resolved through DNS into addresses, each
//! address balanced and health-checked on its own. Used by the data path
//! (picks), the control plane (one set of tables per snapshot) and the Admin
//! API (health); it knows nothing of sessions, plugins or HTTP.
//!
//! Three lifetimes, one module each:
//! - [`Upstreams`] (here), one per process: the DNS client and a registry of
//!   per-upstream shared state, keyed by upstream id (or by `host:port` for
//!   a service whose host is a plain name).
//! - `shared.rs`, as long as the upstream exists, across configuration
//!   changes: the targets' resolved addresses, their health and session
//!   counters, and the one background task (`checker.rs`) that re-resolves
//!   names and runs active probes.
//! - [`Balanced`] (`balanced.rs`), one per upstream per snapshot: the
//!   upstream's settings and weights as that snapshot says, the balancing
//!   tables (`balancer.rs`), and the picks a session makes from them.
//!
//! `report.rs` says what the Admin API and the metrics see of it all; the
//! manual health overrides are [`Upstreams::set_health`].

mod balanced;
mod balancer;
mod checker;
pub mod dns;
mod health;
mod report;
mod shared;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use rustls::ClientConfig;
use strait_config::DnsSettings;
use strait_model::{Algorithm, Config, HashOn, Healthchecks, UpstreamIdx};
use tokio::sync::Notify;
use uuid::Uuid;

pub use balanced::{Attempt, Balanced, NoPeer, Picker};
pub use dns::Dns;
pub use health::Event;
pub use report::SetHealthError;
pub use shared::{InUse, target_key};
pub use strait_model::health::{AddressHealth, TargetHealth, UpstreamHealth};

use balanced::TargetEntry;
use report::parse_address;
use shared::{Endpoint, Shared};

/// Every upstream's shared state, and the DNS client. One per process.
#[derive(Debug)]
pub struct Upstreams {
    /// Swapped by a reload that changes the `dns_*` settings; each
    /// resolution takes the current one.
    dns: Arc<arc_swap::ArcSwap<Dns>>,
    registry: Mutex<HashMap<String, Arc<Shared>>>,
    downs: tokio::sync::broadcast::Sender<Down>,
}

/// Health checks marked an address of an upstream entity's target down.
#[derive(Debug, Clone)]
pub struct Down {
    pub upstream: Uuid,
    pub addr: std::net::SocketAddr,
    /// The target (`host:port`, as [`target_key`] spells it).
    pub target: Arc<str>,
}

impl Upstreams {
    pub fn new(dns: DnsSettings) -> Upstreams {
        Upstreams {
            dns: Arc::new(arc_swap::ArcSwap::from_pointee(Dns::new(dns))),
            registry: Mutex::new(HashMap::new()),
            // A burst of ejections beyond this is seen as a lag (`subscribe_downs`).
            downs: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Addresses health checks mark down, as they are.
    pub fn subscribe_downs(&self) -> tokio::sync::broadcast::Receiver<Down> {
        self.downs.subscribe()
    }

    /// Starts (`on`) or ends a drain of `target` (its id or `host:port`):
    /// a draining target takes no new sessions and its health reads
    /// `DRAINING`. The state is the target's, so it outlives configuration
    /// changes that keep the target. Gives the target's key.
    pub fn set_draining(&self, upstream: Uuid, target: &str, on: bool) -> Result<String, SetHealthError> {
        let b = self.find(upstream).ok_or(SetHealthError::UpstreamNotFound)?;
        let entry = b.find_target(target).ok_or(SetHealthError::TargetNotFound)?;
        if entry.state.set_draining(on) {
            tracing::warn!(upstream = %b.name, target, draining = on, "target drain set through the Admin API");
            b.shared.bump();
        }
        Ok(target_key(&entry.state.host, entry.state.port))
    }

    /// Whether `target` of `upstream` is draining, and its key.
    pub fn draining(&self, upstream: Uuid, target: &str) -> Option<(String, bool)> {
        let b = self.find(upstream)?;
        let entry = b.find_target(target)?;
        Some((target_key(&entry.state.host, entry.state.port), entry.state.is_draining()))
    }

    /// Resolves names with `dns` from now on (a reload): each name takes
    /// the new settings at its next refresh.
    pub fn set_dns(&self, dns: DnsSettings) {
        self.dns.store(Arc::new(Dns::new(dns)));
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
                downs: self.downs.clone(),
            })
        })
    }

    /// The upstream entity `u` for a snapshot being compiled. Nothing runs
    /// until the snapshot is activated.
    pub fn prepare(&self, config: &Config, u: UpstreamIdx, probe_tls: Option<Arc<ClientConfig>>) -> Arc<Balanced> {
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
    pub fn prepare_host(&self, host: &str, port: u16) -> Arc<Balanced> {
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
            on_target_down: None,
            on_target_removed: None,
            extra: Default::default(),
        };
        Balanced::new(shared, host.to_owned(), None, &up, targets, None)
    }

    /// Makes `balancers` the live set: starts their workers, retires the
    /// upstreams no longer configured. Called when a snapshot goes live.
    pub fn activate(&self, balancers: &[Arc<Balanced>]) {
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

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

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
        let first = p.next().unwrap().addr();
        let second = p.next().unwrap().addr();
        assert_ne!(first, second, "a retry moves to another address");
        // Weight 0 is never picked; with both tried, retries repeat.
        assert!(p.next().unwrap().addr().port() == 80);

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
            assert_eq!(p.next().unwrap().addr(), "10.0.0.1:80".parse().unwrap(), "the unhealthy address is skipped");
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
            let attempt = b_ip.picker("192.0.2.1".parse().unwrap()).unwrap().next().unwrap();
            held.push((attempt.addr(), attempt));
        }
        // Weights 100 and 300: least-connections per unit of weight puts
        // three of four open sessions on the heavier address.
        let heavy = held.iter().filter(|(a, _)| a.ip().to_string() == "10.0.0.2").count();
        assert_eq!(heavy, 3, "{:?}", held.iter().map(|(a, _)| a).collect::<Vec<_>>());
    }
}
