//! An upstream's `healthchecks` record, typed: Kong's shape and defaults
//! (`active` probes, `passive` observation of real sessions, `threshold`),
//! plus Strait's `tls` probe type.
//!
//! Parsing reports every problem with its full path
//! (`healthchecks.active.unhealthy.tcp_failures`), as Kong does.

use serde_json::{Map, Value, json};

use crate::fields::int_in;

/// What an active probe does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckType {
    /// Connect, then close.
    Tcp,
    /// Connect and complete a TLS handshake (Strait's extension); an expired
    /// or not yet valid certificate fails the probe.
    Tls,
    /// Send `GET http_path` and judge the status line.
    Http,
    /// `Http` over TLS.
    Https,
    /// Kong's gRPC probes: accepted in passive records, refused for active
    /// probes (Strait has no HTTP/2 client).
    Grpc,
    Grpcs,
}

impl CheckType {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckType::Tcp => "tcp",
            CheckType::Tls => "tls",
            CheckType::Http => "http",
            CheckType::Https => "https",
            CheckType::Grpc => "grpc",
            CheckType::Grpcs => "grpcs",
        }
    }

    fn parse(s: &str) -> Option<CheckType> {
        Some(match s {
            "tcp" => CheckType::Tcp,
            "tls" => CheckType::Tls,
            "http" => CheckType::Http,
            "https" => CheckType::Https,
            "grpc" => CheckType::Grpc,
            "grpcs" => CheckType::Grpcs,
            _ => return None,
        })
    }

    /// The probe runs over TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, CheckType::Tls | CheckType::Https | CheckType::Grpcs)
    }
}

/// Thresholds for turning a target unhealthy. 0 disables a counter.
#[derive(Debug, Clone, PartialEq)]
pub struct Unhealthy {
    /// Seconds between probes of an unhealthy target (active only; 0 = none).
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub tcp_failures: u8,
    pub timeouts: u8,
    pub http_failures: u8,
}

/// Thresholds for turning a target healthy again.
#[derive(Debug, Clone, PartialEq)]
pub struct Healthy {
    /// Seconds between probes of a healthy target (active only; 0 = none).
    pub interval: f64,
    pub http_statuses: Vec<u16>,
    pub successes: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Active {
    pub kind: CheckType,
    /// Seconds a probe may take.
    pub timeout: f64,
    pub concurrency: u32,
    pub http_path: String,
    pub https_sni: Option<String>,
    pub https_verify_certificate: bool,
    pub headers: Map<String, Value>,
    pub healthy: Healthy,
    pub unhealthy: Unhealthy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    pub kind: CheckType,
    pub healthy: Healthy,
    pub unhealthy: Unhealthy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Healthchecks {
    /// Percentage of the upstream's weight that must be healthy for the
    /// upstream to take sessions at all.
    pub threshold: f64,
    pub active: Active,
    pub passive: Passive,
}

impl Default for Healthchecks {
    fn default() -> Self {
        Healthchecks {
            threshold: 0.0,
            active: Active {
                kind: CheckType::Http,
                timeout: 1.0,
                concurrency: 10,
                http_path: "/".into(),
                https_sni: None,
                https_verify_certificate: true,
                headers: Map::new(),
                healthy: Healthy { interval: 0.0, http_statuses: vec![200, 302], successes: 0 },
                unhealthy: Unhealthy {
                    interval: 0.0,
                    http_statuses: vec![429, 404, 500, 501, 502, 503, 504, 505],
                    tcp_failures: 0,
                    timeouts: 0,
                    http_failures: 0,
                },
            },
            passive: Passive {
                kind: CheckType::Http,
                healthy: Healthy {
                    interval: 0.0,
                    http_statuses: vec![
                        200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304, 305, 306, 307, 308,
                    ],
                    successes: 0,
                },
                unhealthy: Unhealthy {
                    interval: 0.0,
                    http_statuses: vec![429, 500, 503],
                    tcp_failures: 0,
                    timeouts: 0,
                    http_failures: 0,
                },
            },
        }
    }
}

impl Healthchecks {
    /// Active probes run for healthy or for unhealthy targets.
    pub fn active_enabled(&self) -> bool {
        self.active.healthy.interval > 0.0 || self.active.unhealthy.interval > 0.0
    }

    /// Real sessions count towards a target's health.
    pub fn passive_enabled(&self) -> bool {
        let u = &self.passive.unhealthy;
        u.tcp_failures > 0 || u.timeouts > 0 || u.http_failures > 0 || self.passive.healthy.successes > 0
    }

    /// Either kind of check is on; otherwise targets report `HEALTHCHECKS_OFF`.
    pub fn enabled(&self) -> bool {
        self.active_enabled() || self.passive_enabled()
    }

    /// Parses a `healthchecks` value (absent or null: Kong's defaults).
    /// Errors are `(path, message)` with paths under `healthchecks`.
    pub fn parse(v: Option<&Value>) -> Result<Healthchecks, Vec<(String, String)>> {
        let mut p = Parser { errors: Vec::new() };
        let mut hc = Healthchecks::default();
        if let Some(obj) = p.record(v, "healthchecks") {
            p.unknown(obj, "healthchecks", &["threshold", "active", "passive"]);
            if let Some(t) = p.number(obj, "healthchecks", "threshold", 0.0, 100.0) {
                hc.threshold = t;
            }
            p.active(obj.get("active"), &mut hc.active);
            p.passive(obj.get("passive"), &mut hc.passive);
        }
        if hc.active_enabled() {
            if matches!(hc.active.kind, CheckType::Grpc | CheckType::Grpcs) {
                p.errors.push((
                    "healthchecks.active.type".into(),
                    "gRPC probes are not supported; use tcp, tls, http or https".into(),
                ));
            }
            if hc.active.timeout <= 0.0 {
                p.errors.push((
                    "healthchecks.active.timeout".into(),
                    "must be greater than 0 when active health checks are enabled".into(),
                ));
            }
        }
        if p.errors.is_empty() { Ok(hc) } else { Err(p.errors) }
    }

    /// Kong's full shape, every default filled in.
    pub fn to_json(&self) -> Value {
        let a = &self.active;
        let p = &self.passive;
        json!({
            "threshold": self.threshold,
            "active": {
                "type": a.kind.as_str(),
                "timeout": a.timeout,
                "concurrency": a.concurrency,
                "http_path": a.http_path,
                "https_sni": a.https_sni,
                "https_verify_certificate": a.https_verify_certificate,
                "headers": if a.headers.is_empty() { Value::Null } else { Value::Object(a.headers.clone()) },
                "healthy": {
                    "interval": a.healthy.interval,
                    "http_statuses": a.healthy.http_statuses,
                    "successes": a.healthy.successes,
                },
                "unhealthy": {
                    "interval": a.unhealthy.interval,
                    "http_statuses": a.unhealthy.http_statuses,
                    "tcp_failures": a.unhealthy.tcp_failures,
                    "timeouts": a.unhealthy.timeouts,
                    "http_failures": a.unhealthy.http_failures,
                },
            },
            "passive": {
                "type": p.kind.as_str(),
                "healthy": { "http_statuses": p.healthy.http_statuses, "successes": p.healthy.successes },
                "unhealthy": {
                    "http_statuses": p.unhealthy.http_statuses,
                    "tcp_failures": p.unhealthy.tcp_failures,
                    "timeouts": p.unhealthy.timeouts,
                    "http_failures": p.unhealthy.http_failures,
                },
            },
        })
    }
}

struct Parser {
    errors: Vec<(String, String)>,
}

impl Parser {
    fn err(&mut self, path: &str, key: &str, msg: impl Into<String>) {
        self.errors.push((format!("{path}.{key}"), msg.into()));
    }

    /// A record, or `None` when absent/null (defaults apply).
    fn record<'v>(&mut self, v: Option<&'v Value>, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o),
            Some(_) => {
                self.errors.push((path.to_owned(), "expected a record".into()));
                None
            }
        }
    }

    fn unknown(&mut self, obj: &Map<String, Value>, path: &str, allowed: &[&str]) {
        for k in obj.keys().filter(|k| !allowed.contains(&k.as_str())) {
            self.err(path, k, "unknown field");
        }
    }

    fn number(&mut self, obj: &Map<String, Value>, path: &str, key: &str, lo: f64, hi: f64) -> Option<f64> {
        let v = obj.get(key).filter(|v| !v.is_null())?;
        match v.as_f64() {
            Some(n) if (lo..=hi).contains(&n) => Some(n),
            Some(_) => {
                self.err(path, key, format!("value should be between {lo} and {hi}"));
                None
            }
            None => {
                self.err(path, key, "expected a number");
                None
            }
        }
    }

    fn int(&mut self, obj: &Map<String, Value>, path: &str, key: &str, lo: i64, hi: i64) -> Option<i64> {
        let v = obj.get(key).filter(|v| !v.is_null())?;
        int_in(v, lo, hi).map_err(|e| self.err(path, key, e)).ok()
    }

    fn string<'v>(&mut self, obj: &'v Map<String, Value>, path: &str, key: &str) -> Option<&'v str> {
        match obj.get(key).filter(|v| !v.is_null())? {
            Value::String(s) => Some(s),
            _ => {
                self.err(path, key, "expected a string");
                None
            }
        }
    }

    fn kind(&mut self, obj: &Map<String, Value>, path: &str, active: bool) -> Option<CheckType> {
        let s = self.string(obj, path, "type")?;
        match CheckType::parse(s) {
            // `tls` is a probe; passive records only observe sessions.
            Some(CheckType::Tls) if !active => {
                self.err(path, "type", "expected one of: tcp, http, https, grpc, grpcs");
                None
            }
            Some(t) => Some(t),
            None if active => {
                self.err(path, "type", "expected one of: tcp, tls, http, https, grpc, grpcs");
                None
            }
            None => {
                self.err(path, "type", "expected one of: tcp, http, https, grpc, grpcs");
                None
            }
        }
    }

    fn statuses(&mut self, obj: &Map<String, Value>, path: &str, into: &mut Vec<u16>) {
        let Some(v) = obj.get("http_statuses").filter(|v| !v.is_null()) else {
            return;
        };
        let Value::Array(items) = v else {
            self.err(path, "http_statuses", "expected an array");
            return;
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match int_in(item, 100, 999) {
                Ok(n) => out.push(n as u16),
                Err(e) => self.err(path, &format!("http_statuses[{}]", i + 1), e),
            }
        }
        *into = out;
    }

    fn healthy(&mut self, v: Option<&Value>, path: &str, h: &mut Healthy, active: bool) {
        let Some(obj) = self.record(v, path) else {
            return;
        };
        let allowed: &[&str] =
            if active { &["interval", "http_statuses", "successes"] } else { &["http_statuses", "successes"] };
        self.unknown(obj, path, allowed);
        if active {
            if let Some(i) = self.number(obj, path, "interval", 0.0, 65535.0) {
                h.interval = i;
            }
        }
        self.statuses(obj, path, &mut h.http_statuses);
        if let Some(n) = self.int(obj, path, "successes", 0, 255) {
            h.successes = n as u8;
        }
    }

    fn unhealthy(&mut self, v: Option<&Value>, path: &str, u: &mut Unhealthy, active: bool) {
        let Some(obj) = self.record(v, path) else {
            return;
        };
        let allowed: &[&str] = if active {
            &["interval", "http_statuses", "tcp_failures", "timeouts", "http_failures"]
        } else {
            &["http_statuses", "tcp_failures", "timeouts", "http_failures"]
        };
        self.unknown(obj, path, allowed);
        if active {
            if let Some(i) = self.number(obj, path, "interval", 0.0, 65535.0) {
                u.interval = i;
            }
        }
        self.statuses(obj, path, &mut u.http_statuses);
        for (key, slot) in [
            ("tcp_failures", &mut u.tcp_failures),
            ("timeouts", &mut u.timeouts),
            ("http_failures", &mut u.http_failures),
        ] {
            if let Some(n) = self.int(obj, path, key, 0, 255) {
                *slot = n as u8;
            }
        }
    }

    fn active(&mut self, v: Option<&Value>, a: &mut Active) {
        let path = "healthchecks.active";
        let Some(obj) = self.record(v, path) else {
            return;
        };
        self.unknown(
            obj,
            path,
            &[
                "type",
                "timeout",
                "concurrency",
                "http_path",
                "https_sni",
                "https_verify_certificate",
                "headers",
                "healthy",
                "unhealthy",
            ],
        );
        if let Some(t) = self.kind(obj, path, true) {
            a.kind = t;
        }
        if let Some(t) = self.number(obj, path, "timeout", 0.0, 65535.0) {
            a.timeout = t;
        }
        if let Some(c) = self.int(obj, path, "concurrency", 1, 1 << 31) {
            a.concurrency = c.min(i64::from(u32::MAX)) as u32;
        }
        if let Some(p) = self.string(obj, path, "http_path") {
            if p.starts_with('/') && !p.chars().any(|c| c.is_control() || c == ' ') {
                a.http_path = p.to_owned();
            } else {
                self.err(path, "http_path", "should start with: /");
            }
        }
        if let Some(s) = self.string(obj, path, "https_sni") {
            if s.parse::<std::net::IpAddr>().is_ok() || !crate::declarative::is_host(s) {
                self.err(path, "https_sni", "invalid value: ".to_owned() + s);
            } else {
                a.https_sni = Some(s.to_owned());
            }
        }
        match obj.get("https_verify_certificate").filter(|v| !v.is_null()) {
            None => {}
            Some(Value::Bool(b)) => a.https_verify_certificate = *b,
            Some(_) => self.err(path, "https_verify_certificate", "expected a boolean"),
        }
        match obj.get("headers").filter(|v| !v.is_null()) {
            None => {}
            Some(Value::Object(h)) => {
                for (name, values) in h {
                    let ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        && !name.is_empty()
                        && values
                            .as_array()
                            .is_some_and(|vs| vs.iter().all(|v| v.as_str().is_some_and(|s| !s.contains(['\r', '\n']))));
                    if !ok {
                        self.err(path, &format!("headers.{name}"), "expected an array of strings");
                    }
                }
                a.headers = h.clone();
            }
            Some(_) => self.err(path, "headers", "expected a map"),
        }
        self.healthy(obj.get("healthy"), "healthchecks.active.healthy", &mut a.healthy, true);
        self.unhealthy(obj.get("unhealthy"), "healthchecks.active.unhealthy", &mut a.unhealthy, true);
    }

    fn passive(&mut self, v: Option<&Value>, p: &mut Passive) {
        let path = "healthchecks.passive";
        let Some(obj) = self.record(v, path) else {
            return;
        };
        self.unknown(obj, path, &["type", "healthy", "unhealthy"]);
        if let Some(t) = self.kind(obj, path, false) {
            p.kind = t;
        }
        self.healthy(obj.get("healthy"), "healthchecks.passive.healthy", &mut p.healthy, false);
        self.unhealthy(obj.get("unhealthy"), "healthchecks.passive.unhealthy", &mut p.unhealthy, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(v: Value) -> Vec<(String, String)> {
        Healthchecks::parse(Some(&v)).expect_err("should be refused")
    }

    #[test]
    fn defaults_and_round_trip() {
        let hc = Healthchecks::parse(None).unwrap();
        assert_eq!(hc, Healthchecks::default());
        assert!(!hc.enabled());
        let back = Healthchecks::parse(Some(&hc.to_json())).unwrap();
        assert_eq!(back, hc);
        let v = json!({"active": {"type": "tls", "healthy": {"interval": 0.5, "successes": 2},
            "unhealthy": {"interval": 1, "tcp_failures": 3, "timeouts": 2}}, "passive": {"type": "tcp",
            "unhealthy": {"tcp_failures": 1}}, "threshold": 25});
        let hc = Healthchecks::parse(Some(&v)).unwrap();
        assert!(hc.active_enabled() && hc.passive_enabled());
        assert_eq!(hc.active.kind, CheckType::Tls);
        assert_eq!(hc.active.unhealthy.tcp_failures, 3);
        assert_eq!(Healthchecks::parse(Some(&hc.to_json())).unwrap(), hc);
    }

    #[test]
    fn impossible_values_name_the_field() {
        let e = errs(json!({"active": {"type": "icmp", "timeout": -1, "concurrency": 0,
            "unhealthy": {"tcp_failures": 300, "http_statuses": [200, 1000]}}, "threshold": 101}));
        let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
        for f in [
            "healthchecks.active.type",
            "healthchecks.active.timeout",
            "healthchecks.active.concurrency",
            "healthchecks.active.unhealthy.tcp_failures",
            "healthchecks.active.unhealthy.http_statuses[2]",
            "healthchecks.threshold",
        ] {
            assert!(fields.contains(&f), "{f} missing from {e:?}");
        }
        let e = errs(json!({"active": {"healthy": {"interval": 5}, "type": "grpc"}}));
        assert_eq!(e[0].0, "healthchecks.active.type");
        let e = errs(json!({"active": {"healthy": {"interval": 5}, "timeout": 0}}));
        assert_eq!(e[0].0, "healthchecks.active.timeout");
        let e = errs(json!({"passive": {"type": "tls", "bogus": 1}}));
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errs(json!("on"));
        assert_eq!(e[0], ("healthchecks".to_owned(), "expected a record".to_owned()));
    }
}
