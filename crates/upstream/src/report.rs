//! What `GET /upstreams/{u}/health` and the metrics show of an upstream
//! (the report types are `strait_model::health`'s): every target and address
//! with its health and why; and why a manual override was refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use strait_model::health::{AddressHealth, TargetHealth, UpstreamHealth};

use crate::balanced::Balanced;

/// `ip:port` or `[ipv6]:port`.
pub(crate) fn parse_address(s: &str) -> Option<SocketAddr> {
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

impl Balanced {
    pub(crate) fn report(&self) -> UpstreamHealth {
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
            let health = if t.state.is_draining() {
                "DRAINING"
            } else if addresses.is_empty() && dns.error.is_some() {
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
pub(crate) fn split_target(t: &str) -> Option<(String, u16)> {
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
