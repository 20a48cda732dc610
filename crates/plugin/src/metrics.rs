//! Process-wide metrics, in the Prometheus text format (`/metrics`).
//!
//! Strait's own series (sessions, TLS handshakes, router misses, connect
//! attempts, plugin refusals) are relaxed atomics the host counts into.
//! Plugins add their own series as an [`Exporter`]: one value per type per
//! process ([`Metrics::exporter`]), kept while a configured instance holds
//! it, rendered after Strait's series. Counting into an exporter is the
//! plugin's business; the hot path here is one relaxed add.

use std::any::{Any, TypeId};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use strait_model::health::UpstreamHealth;

/// Session counters at one moment (`/status`, `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionCounts {
    pub accepted: u64,
    pub handled: u64,
    pub active: u64,
}

/// What an exporter may show besides its own counts.
#[derive(Debug)]
pub struct Scrape<'a> {
    pub sessions: SessionCounts,
    /// Every configured upstream's health.
    pub upstreams: &'a [UpstreamHealth],
}

/// A plugin's series in the exposition.
pub trait Exporter: Any + Send + Sync {
    /// Appends the series (with their `# HELP`/`# TYPE` lines, see
    /// [`family`]) to `out`.
    fn render(&self, out: &mut String, scrape: &Scrape<'_>);
}

/// A registered exporter: found by type, rendered while someone holds it.
struct Registered {
    ty: TypeId,
    any: Weak<dyn Any + Send + Sync>,
    exporter: Weak<dyn Exporter>,
}

/// Every metric of the process.
#[derive(Default)]
pub struct Metrics {
    tls_handshakes: AtomicU64,
    tls_failures: AtomicU64,
    router_misses: AtomicU64,
    connects: AtomicU64,
    connect_failures: AtomicU64,
    rejected: AtomicU64,
    exporters: Mutex<Vec<Registered>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A TLS handshake with a client ended.
    #[inline]
    pub fn tls_handshake(&self, ok: bool) {
        self.tls_handshakes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.tls_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// No route matched a session.
    #[inline]
    pub fn router_miss(&self) {
        self.router_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// One connection attempt to an upstream ended.
    #[inline]
    pub fn connect_attempt(&self, ok: bool) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.connect_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A plugin refused a session.
    #[inline]
    pub fn plugin_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// The process's exporter of type `T`: the one a live holder keeps, or
    /// a new one. It is rendered for as long as someone holds it.
    pub fn exporter<T: Exporter + Default>(&self) -> Arc<T> {
        let mut list = self.exporters.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|r| r.any.strong_count() > 0);
        let ty = TypeId::of::<T>();
        if let Some(found) = list.iter().filter(|r| r.ty == ty).find_map(|r| r.any.upgrade()) {
            if let Ok(typed) = found.downcast::<T>() {
                return typed;
            }
        }
        let fresh = Arc::new(T::default());
        let any: Arc<dyn Any + Send + Sync> = fresh.clone();
        let exporter: Arc<dyn Exporter> = fresh.clone();
        list.push(Registered { ty, any: Arc::downgrade(&any), exporter: Arc::downgrade(&exporter) });
        fresh
    }

    /// The whole exposition, in the Prometheus text format 0.0.4.
    pub fn render(&self, sessions: SessionCounts, upstreams: &[UpstreamHealth]) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        family(&mut out, "strait_sessions_active", "gauge", "Sessions open now.");
        let _ = writeln!(out, "strait_sessions_active {}", sessions.active);
        family(&mut out, "strait_sessions_accepted_total", "counter", "Sessions accepted.");
        let _ = writeln!(out, "strait_sessions_accepted_total {}", sessions.accepted);
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

        // Rendered without the lock: an exporter may take its own.
        let live: Vec<Arc<dyn Exporter>> = {
            let mut list = self.exporters.lock().unwrap_or_else(|p| p.into_inner());
            list.retain(|r| r.any.strong_count() > 0);
            list.iter().filter_map(|r| r.exporter.upgrade()).collect()
        };
        let scrape = Scrape { sessions, upstreams };
        for e in live {
            e.render(&mut out, &scrape);
        }
        out
    }
}

/// The `# HELP` and `# TYPE` lines that open a metric family.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it.
pub fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Count(AtomicU64);

    impl Exporter for Count {
        fn render(&self, out: &mut String, scrape: &Scrape<'_>) {
            family(out, "test_count", "counter", "A test.");
            let _ = writeln!(out, "test_count {} {}", self.0.load(Ordering::Relaxed), scrape.sessions.active);
        }
    }

    #[test]
    fn an_exporter_is_one_per_type_and_rendered_while_held() {
        let m = Metrics::default();
        let a = m.exporter::<Count>();
        let b = m.exporter::<Count>();
        assert!(Arc::ptr_eq(&a, &b), "one per type and process");
        a.0.fetch_add(2, Ordering::Relaxed);
        let counts = SessionCounts { accepted: 1, handled: 0, active: 1 };
        let text = m.render(counts, &[]);
        assert!(text.contains("strait_sessions_active 1\n"), "{text}");
        assert!(text.contains("test_count 2 1\n"), "{text}");
        drop((a, b));
        assert!(!m.render(counts, &[]).contains("test_count"), "nobody holds it: gone");
    }
}
