//! An upstream's health as a report: what `GET /upstreams/{u}/health`
//! shows and the metrics export. Plain data, made by `strait-upstream` (which
//! keeps the health itself) and read by the Admin API and the plugins'
//! metrics exporters, so neither needs the balancer to speak of it.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

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
