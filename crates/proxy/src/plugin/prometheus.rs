//! Metrics in the Prometheus text format, served on `status_listen` at
//! `/metrics`.
//!
//! Strait's own series (sessions, TLS handshakes, router misses, connect
//! attempts) are always counted. Kong's stream series
//! (`kong_stream_sessions_total`, `kong_session_duration_ms`,
//! `kong_bandwidth_bytes`, `kong_upstream_target_health`) appear once the
//! `prometheus` plugin is configured. Every count is a relaxed atomic add:
//! the cells a route's sessions count into are found when the plugin is
//! configured, so a session looks nothing up and takes no lock.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::{Conf, ConfigureCx, Instance, Plugin, Session};
use crate::StatsSnapshot;
use crate::access_log::CloseReason;
use crate::upstream::UpstreamHealth;

/// Kong's buckets for latency histograms, in milliseconds.
const BUCKETS_MS: [u64; 21] =
    [1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 30000, 60000];
const CODES: [u16; 6] = [200, 400, 403, 500, 502, 503];
const SOURCES: [&str; 3] = ["service", "kong", "exit"];

/// The counts of one (service, route) pair.
#[derive(Debug, Default)]
pub struct Cells {
    /// By code (the last slot: any other code) and source.
    sessions: [[AtomicU64; 3]; 7],
    buckets: [AtomicU64; BUCKETS_MS.len() + 1],
    duration_sum_ms: AtomicU64,
    ingress: AtomicU64,
    egress: AtomicU64,
}

impl Cells {
    fn total(&self) -> u64 {
        self.sessions.iter().flatten().map(|n| n.load(Ordering::Relaxed)).sum()
    }
}

/// Which of Kong's series an instance asked for.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    status_code: bool,
    latency: bool,
    bandwidth: bool,
    upstream_health: bool,
}

/// Every metric of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    tls_handshakes: AtomicU64,
    tls_failures: AtomicU64,
    router_misses: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    rejected: AtomicU64,
    cells: Mutex<HashMap<(String, String), Arc<Cells>>>,
    /// The live prometheus instances' flags.
    instances: Mutex<Vec<Weak<Flags>>>,
}

impl Metrics {
    pub(crate) fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.tls_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn router_miss(&self) {
        self.router_misses.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn connect_attempt(&self, ok: bool) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.connect_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn plugin_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    fn cells(&self, service: &str, route: &str) -> Arc<Cells> {
        let mut map = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((service.to_owned(), route.to_owned())).or_default().clone()
    }

    /// The whole exposition, in the Prometheus text format 0.0.4.
    pub fn render(&self, stats: StatsSnapshot, upstreams: &[UpstreamHealth]) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flags: Vec<Flags> = {
            let mut list = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).map(|f| *f).collect()
        };
        let any = |f: fn(&Flags) -> bool| flags.iter().any(f);

        family(&mut out, "strait_sessions_active", "gauge", "Sessions open now.");
        let _ = writeln!(out, "strait_sessions_active {}", stats.active);
        family(&mut out, "strait_sessions_accepted_total", "counter", "Sessions accepted.");
        let _ = writeln!(out, "strait_sessions_accepted_total {}", stats.accepted);
        family(&mut out, "strait_tls_handshakes_total", "counter", "TLS handshakes with clients, by result.");
        let (hs, hf) = (load(&self.tls_handshakes), load(&self.tls_failures));
        let _ = writeln!(out, "strait_tls_handshakes_total{{result=\"success\"}} {}", hs.saturating_sub(hf));
        let _ = writeln!(out, "strait_tls_handshakes_total{{result=\"failure\"}} {hf}");
        family(&mut out, "strait_router_misses_total", "counter", "Sessions no route matched.");
        let _ = writeln!(out, "strait_router_misses_total {}", load(&self.router_misses));
        family(&mut out, "strait_upstream_connect_attempts_total", "counter", "Connection attempts to upstreams.");
        let (ca, cf) = (load(&self.connects), load(&self.connect_failures));
        let _ = writeln!(out, "strait_upstream_connect_attempts_total{{result=\"success\"}} {}", ca.saturating_sub(cf));
        let _ = writeln!(out, "strait_upstream_connect_attempts_total{{result=\"failure\"}} {cf}");
        family(&mut out, "strait_plugin_rejections_total", "counter", "Sessions a plugin refused.");
        let _ = writeln!(out, "strait_plugin_rejections_total {}", load(&self.rejected));

        let cells: Vec<((String, String), Arc<Cells>)> = {
            let mut map = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            // Routes no live instance counts for any more (removed, renamed,
            // or only compiled by a check) leave the exposition.
            map.retain(|_, c| Arc::strong_count(c) > 1);
            let mut v: Vec<_> =
                map.iter().filter(|(_, c)| c.total() > 0).map(|(k, c)| (k.clone(), c.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        if any(|f| f.status_code) {
            family(&mut out, "kong_stream_sessions_total", "counter", "Stream sessions by status code.");
            for ((service, route), c) in &cells {
                for (ci, row) in c.sessions.iter().enumerate() {
                    for (si, n) in row.iter().enumerate() {
                        let n = load(n);
                        if n == 0 {
                            continue;
                        }
                        let code = CODES.get(ci).map_or_else(|| "other".to_owned(), u16::to_string);
                        let _ = writeln!(
                            out,
                            "kong_stream_sessions_total{{service=\"{}\",route=\"{}\",code=\"{code}\",source=\"{}\",workspace=\"default\"}} {n}",
                            esc(service),
                            esc(route),
                            SOURCES[si]
                        );
                    }
                }
            }
        }
        if any(|f| f.latency) {
            family(&mut out, "kong_session_duration_ms", "histogram", "Stream session duration in milliseconds.");
            for ((service, route), c) in &cells {
                let labels = format!("service=\"{}\",route=\"{}\",workspace=\"default\"", esc(service), esc(route));
                let mut cumulative = 0;
                for (i, le) in BUCKETS_MS.iter().enumerate() {
                    cumulative += load(&c.buckets[i]);
                    let _ = writeln!(out, "kong_session_duration_ms_bucket{{{labels},le=\"{le}\"}} {cumulative}");
                }
                cumulative += load(&c.buckets[BUCKETS_MS.len()]);
                let _ = writeln!(out, "kong_session_duration_ms_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
                let _ = writeln!(out, "kong_session_duration_ms_sum{{{labels}}} {}", load(&c.duration_sum_ms));
                let _ = writeln!(out, "kong_session_duration_ms_count{{{labels}}} {cumulative}");
            }
        }
        if any(|f| f.bandwidth) {
            family(&mut out, "kong_bandwidth_bytes", "counter", "Bytes relayed, by direction (ingress: from clients).");
            for ((service, route), c) in &cells {
                for (dir, n) in [("ingress", &c.ingress), ("egress", &c.egress)] {
                    let _ = writeln!(
                        out,
                        "kong_bandwidth_bytes{{service=\"{}\",route=\"{}\",direction=\"{dir}\",type=\"stream\",consumer=\"\",workspace=\"default\"}} {}",
                        esc(service),
                        esc(route),
                        load(n)
                    );
                }
            }
        }
        if any(|f| f.upstream_health) {
            family(
                &mut out,
                "kong_upstream_target_health",
                "gauge",
                "Health of each upstream target address (1 in its state).",
            );
            for u in upstreams {
                for t in &u.targets {
                    for a in &t.addresses {
                        for state in ["healthchecks_off", "healthy", "unhealthy", "dns_error"] {
                            let v = u8::from(a.health.eq_ignore_ascii_case(state));
                            let _ = writeln!(
                                out,
                                "kong_upstream_target_health{{upstream=\"{}\",target=\"{}\",address=\"{}\",state=\"{state}\",subsystem=\"stream\",workspace=\"default\"}} {v}",
                                esc(&u.name),
                                esc(&t.target),
                                a.addr
                            );
                        }
                    }
                    if t.addresses.is_empty() && t.health == "DNS_ERROR" {
                        let _ = writeln!(
                            out,
                            "kong_upstream_target_health{{upstream=\"{}\",target=\"{}\",address=\"\",state=\"dns_error\",subsystem=\"stream\",workspace=\"default\"}} 1",
                            esc(&u.name),
                            esc(&t.target)
                        );
                    }
                }
            }
        }
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The `prometheus` plugin: Kong's stream series for the sessions it applies to.
#[derive(Debug)]
pub struct Prometheus;

struct PromInstance {
    /// Registered (weakly) with the metrics: the series stay while it lives.
    _flags: Arc<Flags>,
    /// By route index; the last one for sessions without a route.
    cells: Vec<Arc<Cells>>,
}

impl Plugin for Prometheus {
    type Config = Flags;

    fn name(&self) -> &'static str {
        "prometheus"
    }

    fn priority(&self) -> i32 {
        13
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<Flags> {
        conf.boolean("per_consumer", false);
        // Kong defaults these to false; on L4 they cost a relaxed atomic add
        // per session, so Strait turns them on unless told otherwise.
        let status_code = conf.boolean("status_code_metrics", true);
        let latency = conf.boolean("latency_metrics", true);
        let bandwidth = conf.boolean("bandwidth_metrics", true);
        let upstream_health = conf.boolean("upstream_health_metrics", true);
        conf.boolean("ai_metrics", false);
        conf.boolean("wasm_metrics", false);
        conf.is_ok().then_some(Flags { status_code, latency, bandwidth, upstream_health })
    }

    fn configure(&self, flags: Flags, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, String> {
        let metrics = cx.metrics().clone();
        let config = cx.config();
        let mut cells: Vec<Arc<Cells>> = config
            .routes
            .iter()
            .map(|r| {
                let service = r.service.map(|s| &config.services[s.0]);
                let name = service.map(|s| s.name.clone().unwrap_or_else(|| s.host.clone())).unwrap_or_default();
                metrics.cells(&name, &r.label())
            })
            .collect();
        cells.push(metrics.cells("", ""));
        let flags = Arc::new(flags);
        metrics.instances.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&flags));
        Ok(Arc::new(PromInstance { _flags: flags, cells }))
    }
}

impl Instance for PromInstance {
    fn log(&self, s: &mut Session) {
        let Some(r) = s.record() else { return };
        let c = match s.route_index() {
            Some(i) => &self.cells[i.0],
            None => &self.cells[self.cells.len() - 1],
        };
        let code = CODES.iter().position(|x| *x == r.status).unwrap_or(CODES.len());
        let source = match r.reason {
            CloseReason::Rejected => 2,
            _ if r.status == 200 => 0,
            _ => 1,
        };
        c.sessions[code][source].fetch_add(1, Ordering::Relaxed);
        let ms = r.duration.as_millis() as u64;
        let bucket = BUCKETS_MS.iter().position(|le| ms <= *le).unwrap_or(BUCKETS_MS.len());
        c.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        c.duration_sum_ms.fetch_add(ms, Ordering::Relaxed);
        c.ingress.fetch_add(r.bytes_received, Ordering::Relaxed);
        c.egress.fetch_add(r.bytes_sent, Ordering::Relaxed);
    }
}
