//! One address's health: Kong's counters (successes, TCP failures, timeouts,
//! HTTP failures) and the healthy/unhealthy state they drive.
//!
//! A success resets the failure counters and counts towards recovery of an
//! unhealthy address; a failure resets the success counter and counts towards
//! ejection of a healthy one. A threshold of 0 disables that counter. The
//! state is read with one atomic load on the data path; the counters sit
//! behind a mutex taken only when an event is reported.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use strait_model::healthchecks::{Healthy, Unhealthy};

/// What one probe or one session attempt showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Success,
    TcpFailure,
    Timeout,
    HttpFailure,
}

/// The thresholds that apply to one kind of observation (active or passive).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Thresholds {
    pub successes: u8,
    pub tcp_failures: u8,
    pub timeouts: u8,
    pub http_failures: u8,
}

impl Thresholds {
    pub(crate) fn new(h: &Healthy, u: &Unhealthy) -> Thresholds {
        Thresholds {
            successes: h.successes,
            tcp_failures: u.tcp_failures,
            timeouts: u.timeouts,
            http_failures: u.http_failures,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    successes: u32,
    tcp_failures: u32,
    timeouts: u32,
    http_failures: u32,
    reason: Option<String>,
    since: Option<SystemTime>,
}

#[derive(Debug)]
pub(crate) struct Health {
    healthy: AtomicBool,
    /// Some counter is not zero. A success on a healthy address with clean
    /// counters changes nothing, so it skips the mutex.
    dirty: AtomicBool,
    counters: Mutex<Counters>,
}

/// A reading for the Admin API.
#[derive(Debug, Clone)]
pub(crate) struct HealthView {
    pub healthy: bool,
    pub reason: Option<String>,
    pub since: Option<SystemTime>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            healthy: AtomicBool::new(true),
            dirty: AtomicBool::new(false),
            counters: Mutex::new(Counters::default()),
        }
    }
}

impl Health {
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn view(&self) -> HealthView {
        let c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        HealthView { healthy: self.is_healthy(), reason: c.reason.clone(), since: c.since }
    }

    /// Counts one event; returns the new state when it changed.
    pub(crate) fn report(&self, event: Event, t: &Thresholds, detail: &str) -> Option<bool> {
        if event == Event::Success && self.is_healthy() && !self.dirty.load(Ordering::Relaxed) {
            return None;
        }
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let healthy = self.is_healthy();
        let flip = match event {
            Event::Success => {
                c.tcp_failures = 0;
                c.timeouts = 0;
                c.http_failures = 0;
                if healthy {
                    false
                } else {
                    c.successes += 1;
                    t.successes > 0 && c.successes >= u32::from(t.successes)
                }
            }
            failure => {
                c.successes = 0;
                if !healthy {
                    false
                } else {
                    let (count, limit) = match failure {
                        Event::TcpFailure => (&mut c.tcp_failures, t.tcp_failures),
                        Event::Timeout => (&mut c.timeouts, t.timeouts),
                        _ => (&mut c.http_failures, t.http_failures),
                    };
                    *count += 1;
                    limit > 0 && *count >= u32::from(limit)
                }
            }
        };
        if !flip {
            let dirty = c.successes + c.tcp_failures + c.timeouts + c.http_failures > 0;
            self.dirty.store(dirty, Ordering::Relaxed);
            return None;
        }
        let now_healthy = !healthy;
        let what = match event {
            Event::Success => "successes",
            Event::TcpFailure => "TCP failures",
            Event::Timeout => "timeouts",
            Event::HttpFailure => "HTTP failures",
        };
        let n = match event {
            Event::Success => c.successes,
            Event::TcpFailure => c.tcp_failures,
            Event::Timeout => c.timeouts,
            Event::HttpFailure => c.http_failures,
        };
        *c = Counters {
            reason: Some(format!("{n} {what}; last: {detail}")),
            since: Some(SystemTime::now()),
            ..Default::default()
        };
        self.healthy.store(now_healthy, Ordering::Relaxed);
        Some(now_healthy)
    }

    /// Sets the state by hand (Admin API); counters start over. Returns
    /// whether the state changed.
    pub(crate) fn set(&self, healthy: bool, reason: String) -> bool {
        let mut c = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let changed = self.is_healthy() != healthy;
        *c = Counters { reason: Some(reason), since: Some(SystemTime::now()), ..Default::default() };
        self.dirty.store(false, Ordering::Relaxed);
        self.healthy.store(healthy, Ordering::Relaxed);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds { successes: 2, tcp_failures: 3, timeouts: 1, http_failures: 0 };

    #[test]
    fn failures_eject_and_successes_restore() {
        let h = Health::default();
        assert_eq!(h.report(Event::TcpFailure, &T, "refused"), None);
        assert_eq!(h.report(Event::TcpFailure, &T, "refused"), None);
        // A success in between starts the failure count over.
        assert_eq!(h.report(Event::Success, &T, "ok"), None);
        assert_eq!(h.report(Event::TcpFailure, &T, "refused"), None);
        assert_eq!(h.report(Event::TcpFailure, &T, "refused"), None);
        assert_eq!(h.report(Event::TcpFailure, &T, "refused"), Some(false));
        assert!(!h.is_healthy());
        assert!(h.view().reason.unwrap().contains("3 TCP failures; last: refused"));
        assert_eq!(h.report(Event::Success, &T, "ok"), None);
        assert_eq!(h.report(Event::Success, &T, "ok"), Some(true));
        // A disabled counter never ejects.
        for _ in 0..10 {
            assert_eq!(h.report(Event::HttpFailure, &T, "500"), None);
        }
        assert_eq!(h.report(Event::Timeout, &T, "slow"), Some(false));
    }

    #[test]
    fn manual_state_resets_counters() {
        let h = Health::default();
        assert!(h.set(false, "marked unhealthy".into()));
        assert!(!h.set(false, "again".into()));
        assert!(h.set(true, "marked healthy".into()));
        let off = Thresholds::default();
        assert_eq!(h.report(Event::TcpFailure, &off, "x"), None, "thresholds of 0 never eject");
    }
}
