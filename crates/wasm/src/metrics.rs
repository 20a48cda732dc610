//! Metrics filters define (`proxy_define_metric`): counters, gauges and
//! histograms, process-wide (every instance of a filter counts into the
//! same series), rendered on `/metrics` as `strait_wasm_<filter>_<name>`
//! through the kit's exporter. Counting is a read lock and an atomic add.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use strait_plugin::metrics::{Exporter, Scrape, escape, family};

use crate::abi::{MetricType, status};

/// Histogram bucket bounds (the values filters record are theirs to scale).
const BUCKETS: [u64; 16] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 25_000, 50_000, 100_000];

#[derive(Debug)]
struct Metric {
    filter: &'static str,
    name: String,
    kind: MetricType,
    /// Counter or gauge value; a histogram's sum.
    value: AtomicI64,
    /// Histogram: observations per bucket (the last one past every bound).
    buckets: Vec<AtomicU64>,
}

/// The most metrics all filters together may define, and the longest name.
const MAX_METRICS: usize = 10_000;
const MAX_NAME: usize = 256;

/// Every metric the filters defined.
#[derive(Debug, Default)]
pub struct Metrics {
    all: RwLock<Vec<Arc<Metric>>>,
}

impl Metrics {
    /// The metric's id: its place, with its type in the low two bits (as
    /// Envoy numbers them). Defining a name again gives the same metric.
    /// `None` past [`MAX_METRICS`] metrics, or for a name over
    /// [`MAX_NAME`] bytes: filters cannot grow `/metrics` without bound.
    pub(crate) fn define(&self, filter: &'static str, kind: MetricType, name: &str) -> Option<u32> {
        let tag = kind as u32;
        {
            let all = self.all.read().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = all.iter().position(|m| m.filter == filter && m.kind == kind && m.name == name) {
                return Some(((i as u32 + 1) << 2) | tag);
            }
        }
        let mut all = self.all.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = all.iter().position(|m| m.filter == filter && m.kind == kind && m.name == name) {
            return Some(((i as u32 + 1) << 2) | tag);
        }
        if all.len() >= MAX_METRICS || name.len() > MAX_NAME {
            return None;
        }
        let buckets = if kind == MetricType::Histogram {
            (0..=BUCKETS.len()).map(|_| AtomicU64::new(0)).collect()
        } else {
            Vec::new()
        };
        all.push(Arc::new(Metric { filter, name: name.to_owned(), kind, value: AtomicI64::new(0), buckets }));
        Some(((all.len() as u32) << 2) | tag)
    }

    fn find(&self, id: u32) -> Option<Arc<Metric>> {
        let i = (id >> 2).checked_sub(1)? as usize;
        let all = self.all.read().unwrap_or_else(|p| p.into_inner());
        all.get(i).filter(|m| m.kind as u32 == id & 3).cloned()
    }

    /// `proxy_increment_metric`: counters go up only, gauges either way.
    pub(crate) fn increment(&self, id: u32, delta: i64) -> i32 {
        let Some(m) = self.find(id) else { return status::NOT_FOUND };
        match m.kind {
            MetricType::Counter if delta <= 0 => status::BAD_ARGUMENT,
            MetricType::Counter | MetricType::Gauge => {
                m.value.fetch_add(delta, Ordering::Relaxed);
                status::OK
            }
            MetricType::Histogram => status::BAD_ARGUMENT,
        }
    }

    /// `proxy_record_metric`: a counter adds, a gauge takes the value, a
    /// histogram observes it.
    pub(crate) fn record(&self, id: u32, value: u64) -> i32 {
        let Some(m) = self.find(id) else { return status::NOT_FOUND };
        let v = i64::try_from(value).unwrap_or(i64::MAX);
        match m.kind {
            MetricType::Counter => {
                m.value.fetch_add(v, Ordering::Relaxed);
            }
            MetricType::Gauge => m.value.store(v, Ordering::Relaxed),
            MetricType::Histogram => {
                let b = BUCKETS.iter().position(|bound| value <= *bound).unwrap_or(BUCKETS.len());
                m.buckets[b].fetch_add(1, Ordering::Relaxed);
                m.value.fetch_add(v, Ordering::Relaxed);
            }
        }
        status::OK
    }

    /// `proxy_get_metric`: a counter's or a gauge's value.
    pub(crate) fn get(&self, id: u32) -> Result<u64, i32> {
        let m = self.find(id).ok_or(status::NOT_FOUND)?;
        match m.kind {
            MetricType::Histogram => Err(status::BAD_ARGUMENT),
            _ => Ok(m.value.load(Ordering::Relaxed) as u64),
        }
    }
}

/// A Prometheus name: what is not `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

impl Exporter for Metrics {
    fn render(&self, out: &mut String, _scrape: &Scrape<'_>) {
        let all: Vec<Arc<Metric>> = self.all.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut seen = std::collections::HashSet::new();
        for m in all {
            let name = format!("strait_wasm_{}_{}", sanitize(m.filter), sanitize(&m.name));
            // Two names that sanitize alike: the first defined is shown.
            if !seen.insert(name.clone()) {
                continue;
            }
            let help = format!("'{}', defined by the Wasm filter '{}'.", escape(&m.name), escape(m.filter));
            let value = m.value.load(Ordering::Relaxed);
            match m.kind {
                MetricType::Counter => {
                    family(out, &name, "counter", &help);
                    let _ = writeln!(out, "{name} {value}");
                }
                MetricType::Gauge => {
                    family(out, &name, "gauge", &help);
                    let _ = writeln!(out, "{name} {value}");
                }
                MetricType::Histogram => {
                    family(out, &name, "histogram", &help);
                    let mut count = 0u64;
                    for (i, b) in m.buckets.iter().enumerate() {
                        count += b.load(Ordering::Relaxed);
                        match BUCKETS.get(i) {
                            Some(bound) => {
                                let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
                            }
                            None => {
                                let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
                            }
                        }
                    }
                    let _ = writeln!(out, "{name}_sum {value}");
                    let _ = writeln!(out, "{name}_count {count}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_as_envoy_and_render_for_prometheus() {
        let m = Metrics::default();
        let c = m.define("f", MetricType::Counter, "hits.total").expect("defined");
        assert_eq!(m.define("f", MetricType::Counter, "hits.total"), Some(c), "defined again: the same metric");
        let g = m.define("f", MetricType::Gauge, "open").expect("defined");
        let h = m.define("f", MetricType::Histogram, "size").expect("defined");
        assert_eq!(m.define("f", MetricType::Counter, &"x".repeat(MAX_NAME + 1)), None, "a name too long");
        assert_eq!(c & 3, 0);
        assert_eq!(g & 3, 1);
        assert_eq!(h & 3, 2);
        assert_eq!(m.increment(c, 2), status::OK);
        assert_eq!(m.increment(c, 0), status::BAD_ARGUMENT, "a counter only goes up");
        assert_eq!(m.increment(g, -3), status::OK);
        assert_eq!(m.record(h, 7), status::OK);
        assert_eq!(m.get(c), Ok(2));
        assert_eq!(m.get(h), Err(status::BAD_ARGUMENT));
        assert_eq!(m.increment(999, 1), status::NOT_FOUND);
        let mut out = String::new();
        m.render(&mut out, &Scrape { sessions: Default::default(), upstreams: &[] });
        assert!(out.contains("strait_wasm_f_hits_total 2\n"), "{out}");
        assert!(out.contains("strait_wasm_f_open -3\n"), "{out}");
        assert!(out.contains("strait_wasm_f_size_bucket{le=\"10\"} 1\n"), "{out}");
        assert!(out.contains("strait_wasm_f_size_count 1\n"), "{out}");
    }
}
