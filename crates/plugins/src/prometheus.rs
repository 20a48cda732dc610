//! The `prometheus` plugin: Kong's stream series
//! (`kong_stream_sessions_total`, `kong_session_duration_ms`,
//! `kong_bandwidth_bytes`, `kong_upstream_target_health`) in the `/metrics`
//! exposition, after Strait's own series, once the plugin is configured.
//!
//! Every count is a relaxed atomic add: the cells a route's sessions count
//! into are found when the plugin is configured, so a session looks nothing
//! up and takes no lock. The cells live in one exporter per process, shared
//! by every instance, so a configuration change keeps the counts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use strait_plugin::metrics::{Exporter, Scrape, escape, family};
use strait_plugin::{CloseReason, Conf, ConfigureCx, ConfigureError, Instance, Plugin, Session, Status};

/// Kong's buckets for latency histograms, in milliseconds.
const BUCKETS_MS: [u64; 21] =
    [1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 300, 400, 500, 1000, 2000, 5000, 10000, 30000, 60000];
const SOURCES: [&str; 3] = ["service", "kong", "exit"];

/// The counts of one (service, route) pair.
#[derive(Debug, Default)]
struct Cells {
    /// By status (in `Status::ALL` order) and source.
    sessions: [[AtomicU64; 3]; Status::ALL.len()],
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

/// Kong's series for the whole process: the cells by (service, route) name,
/// and the flags of the instances alive.
#[derive(Debug, Default)]
struct KongSeries {
    cells: Mutex<HashMap<(String, String), Arc<Cells>>>,
    instances: Mutex<Vec<Weak<Flags>>>,
}

impl KongSeries {
    fn cells(&self, service: &str, route: &str) -> Arc<Cells> {
        let mut map = self.cells.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((service.to_owned(), route.to_owned())).or_default().clone()
    }
}

impl Exporter for KongSeries {
    fn render(&self, out: &mut String, scrape: &Scrape<'_>) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let flags: Vec<Flags> = {
            let mut list = self.instances.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).map(|f| *f).collect()
        };
        let any = |f: fn(&Flags) -> bool| flags.iter().any(f);
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
        let upstreams = scrape.upstreams;
        if any(|f| f.status_code) {
            family(out, "kong_stream_sessions_total", "counter", "Stream sessions by status code.");
            for ((service, route), c) in &cells {
                for (ci, row) in c.sessions.iter().enumerate() {
                    for (si, n) in row.iter().enumerate() {
                        let n = load(n);
                        if n == 0 {
                            continue;
                        }
                        let code = Status::ALL[ci].code();
                        let _ = writeln!(
                            out,
                            "kong_stream_sessions_total{{service=\"{}\",route=\"{}\",code=\"{code}\",source=\"{}\",workspace=\"default\"}} {n}",
                            escape(service),
                            escape(route),
                            SOURCES[si]
                        );
                    }
                }
            }
        }
        if any(|f| f.latency) {
            family(out, "kong_session_duration_ms", "histogram", "Stream session duration in milliseconds.");
            for ((service, route), c) in &cells {
                let labels =
                    format!("service=\"{}\",route=\"{}\",workspace=\"default\"", escape(service), escape(route));
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
            family(out, "kong_bandwidth_bytes", "counter", "Bytes relayed, by direction (ingress: from clients).");
            for ((service, route), c) in &cells {
                for (dir, n) in [("ingress", &c.ingress), ("egress", &c.egress)] {
                    let _ = writeln!(
                        out,
                        "kong_bandwidth_bytes{{service=\"{}\",route=\"{}\",direction=\"{dir}\",type=\"stream\",consumer=\"\",workspace=\"default\"}} {}",
                        escape(service),
                        escape(route),
                        load(n)
                    );
                }
            }
        }
        if any(|f| f.upstream_health) {
            family(
                out,
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
                                escape(&u.name),
                                escape(&t.target),
                                a.addr
                            );
                        }
                    }
                    if t.addresses.is_empty() && t.health == "DNS_ERROR" {
                        let _ = writeln!(
                            out,
                            "kong_upstream_target_health{{upstream=\"{}\",target=\"{}\",address=\"\",state=\"dns_error\",subsystem=\"stream\",workspace=\"default\"}} 1",
                            escape(&u.name),
                            escape(&t.target)
                        );
                    }
                }
            }
        }
    }
}

/// The `prometheus` plugin: Kong's stream series for the sessions it applies to.
#[derive(Debug)]
pub struct Prometheus;

struct PromInstance {
    /// Registered (weakly) with the series: they are shown while it lives.
    _flags: Arc<Flags>,
    /// Keeps the series in the exposition.
    _series: Arc<KongSeries>,
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

    fn configure(&self, flags: Flags, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        let series = cx.metrics().exporter::<KongSeries>();
        let config = cx.config();
        let mut cells: Vec<Arc<Cells>> = config
            .routes
            .iter()
            .map(|r| {
                let service = r.service.map(|s| &config.services[s.0]);
                let name = service.map(|s| s.name.clone().unwrap_or_else(|| s.host.clone())).unwrap_or_default();
                series.cells(&name, &r.label())
            })
            .collect();
        cells.push(series.cells("", ""));
        let flags = Arc::new(flags);
        series.instances.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&flags));
        Ok(Arc::new(PromInstance { _flags: flags, _series: series, cells }))
    }
}

impl Instance for PromInstance {
    fn log(&self, s: &mut Session) {
        let Some(r) = s.record() else { return };
        let c = match s.route_index() {
            Some(i) => &self.cells[i.0],
            None => &self.cells[self.cells.len() - 1],
        };
        let code = Status::ALL.iter().position(|x| *x == r.status).unwrap_or_default();
        let source = match r.reason {
            CloseReason::Rejected => 2,
            _ if r.status == Status::Ok => 0,
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
