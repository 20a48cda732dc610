//! Upstreams (balancing algorithm, hashing, health checks) and their
//! targets.

use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::entities::*;
use crate::fields::{ENTITY, Fields};

use super::flatten::{Builder, Origin};
use super::syntax::{is_host, meta, reference, split_host_port};

impl Builder {
    pub(crate) fn upstream(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "upstream", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        const KNOWN: [&str; 22] = [
            "id",
            "name",
            "algorithm",
            "hash_on",
            "hash_fallback",
            "hash_on_header",
            "hash_fallback_header",
            "hash_on_cookie",
            "hash_on_cookie_path",
            "hash_on_query_arg",
            "hash_fallback_query_arg",
            "hash_on_uri_capture",
            "hash_fallback_uri_capture",
            "slots",
            "healthchecks",
            "tags",
            "host_header",
            "client_certificate",
            "use_srv_name",
            "on_target_down",
            "on_target_removed",
            "targets",
        ];
        let mut allowed = KNOWN.to_vec();
        allowed.extend(["created_at", "updated_at"]);
        f.check_unknown(&allowed);
        let name = f.required_str("name").map(str::to_owned);
        let origin = Origin { path, name: name.clone() };
        let meta = meta(&mut f, "upstream", &origin);
        if let Some(n) = &name {
            if n.parse::<IpAddr>().is_ok() {
                f.err("name", format!("Invalid name ('{n}'); no ip addresses allowed"));
            } else if !is_host(n) {
                f.err("name", format!("Invalid name ('{n}'); must be a valid hostname"));
            }
        }
        let algorithm_field = f.str("algorithm");
        f.note_more(
            "algorithm",
            || json!({"default": Algorithm::RoundRobin.as_str(), "one_of": ["consistent-hashing", "least-connections", "round-robin", "latency"]}),
        );
        let algorithm = match algorithm_field {
            None => Algorithm::RoundRobin,
            Some(a) => Algorithm::parse(a).unwrap_or_else(|| {
                f.err("algorithm", "expected one of: consistent-hashing, least-connections, round-robin, latency");
                Algorithm::RoundRobin
            }),
        };
        let hash = |f: &mut Fields<'_>, key: &str| {
            let field = f.str(key);
            f.note_more(key, || json!({"default": HashOn::None.as_str(), "one_of": HashOn::NAMES}));
            match field {
                None => HashOn::None,
                Some(h) => HashOn::parse(h).unwrap_or_else(|| {
                    f.err(key, format!("expected one of: {}", HashOn::NAMES.join(", ")));
                    HashOn::None
                }),
            }
        };
        let hash_on = hash(&mut f, "hash_on");
        let hash_fallback = hash(&mut f, "hash_fallback");
        hash_rules(&mut f, hash_on, hash_fallback);
        let slots = f.int_or("slots", 10, 65536, 10_000) as u32;
        let host_header = f.str("host_header").map(str::to_owned);
        let client_cert = reference(&mut f, "client_certificate", EntityKind::Certificates);
        let use_srv_name = f.bool_or("use_srv_name", false);
        let on_target_down = one_of(&mut f, "on_target_down", &OnTargetDown::NAMES, OnTargetDown::parse);
        let on_target_removed = one_of(&mut f, "on_target_removed", &OnTargetRemoved::NAMES, OnTargetRemoved::parse);
        f.note("healthchecks", || json!({"type": "record", "default": Healthchecks::default().to_json()}));
        let healthchecks = Healthchecks::parse(f.get("healthchecks")).unwrap_or_else(|errors| {
            for (field, message) in errors {
                f.err(field, message);
            }
            Healthchecks::default()
        });
        let targets = f.nested("targets").cloned();
        let extra: Map<String, Value> = obj
            .iter()
            .filter(|(k, v)| (k.starts_with("hash_on_") || k.starts_with("hash_fallback_")) && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.done(f, "upstream", &origin);
        let idx = UpstreamIdx(self.config.upstreams.len());
        self.config.upstreams.push(Upstream {
            meta,
            name: name.unwrap_or_default(),
            algorithm,
            slots,
            hash_on,
            hash_fallback,
            host_header,
            client_certificate: None,
            healthchecks,
            use_srv_name,
            on_target_down,
            on_target_removed,
            extra,
        });
        if let Some(r) = client_cert {
            self.upstream_client_cert.push((idx, r));
        }
        self.upstream_origin.push(origin.clone());
        for (i, t) in targets.iter().flatten().enumerate() {
            self.target(t, format!("{}.targets[{}]", origin.path, i + 1), Some(idx));
        }
    }

    pub(crate) fn target(&mut self, v: &Value, path: String, parent: Option<UpstreamIdx>) {
        let Some(obj) = self.object(v, "target", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        f.check_unknown(&["id", "target", "weight", "upstream", "tags", "created_at", "updated_at"]);
        let raw = f.required_str("target");
        let origin = Origin { path, name: raw.map(str::to_owned) };
        // A target's address is unique only within its upstream, so generated
        // ids must include the upstream.
        let owner = match parent {
            Some(u) => self.config.upstreams[u.0].name.clone(),
            None => f.get("upstream").map(Value::to_string).unwrap_or_default(),
        };
        let id_origin = Origin { path: origin.path.clone(), name: raw.map(|t| format!("{owner}/{t}")) };
        let meta = meta(&mut f, "target", &id_origin);
        let hp = raw.and_then(|t| match split_host_port(t) {
            Some((h, p)) if is_host(&h) => Some((h, p.unwrap_or(8000))),
            _ => {
                f.err("target", format!("Invalid target ('{t}'); not a valid hostname or ip address"));
                None
            }
        });
        let weight = f.int_or("weight", 0, 65535, 100) as u16;
        let up_ref = reference(&mut f, "upstream", EntityKind::Upstreams);
        if parent.is_none() {
            f.note_more("upstream", || json!({"required": true}));
        }
        if parent.is_none() && up_ref.is_none() {
            f.err("upstream", "required field missing");
        }
        self.done(f, "target", &origin);
        let Some((host, port)) = hp else {
            return;
        };
        let i = self.config.targets.len();
        self.config.targets.push(Target {
            meta,
            upstream: parent.unwrap_or(UpstreamIdx(usize::MAX)),
            host,
            port,
            weight,
        });
        if parent.is_none() {
            if let Some(r) = up_ref {
                self.target_upstream.push((i, r));
            }
        }
        self.target_origin.push(origin);
    }
}

/// Kong's rules tying `hash_on`, `hash_fallback` and their inputs together.
pub(crate) fn hash_rules(f: &mut Fields<'_>, on: HashOn, fallback: HashOn) {
    let conditional = |f: &mut Fields<'_>, if_field: &str, then_field: &str, msg: String| {
        f.err(then_field, msg);
        f.err(ENTITY, format!("failed conditional validation given value of field '{if_field}'"));
    };
    // With nothing to hash, or with a cookie (which Kong always sets), there
    // is nothing to fall back from.
    if matches!(on, HashOn::None | HashOn::Cookie) && fallback != HashOn::None {
        conditional(f, "hash_on", "hash_fallback", "expected one of: none".into());
    } else if on == fallback && !matches!(on, HashOn::None | HashOn::Header | HashOn::QueryArg | HashOn::UriCapture) {
        let others: Vec<&str> = HashOn::NAMES.iter().copied().filter(|n| *n != on.as_str()).collect();
        conditional(f, "hash_on", "hash_fallback", format!("expected one of: {}", others.join(", ")));
    }
    let inputs = [
        (HashOn::Header, "hash_on_header", "hash_fallback_header"),
        (HashOn::Cookie, "hash_on_cookie", "hash_on_cookie"),
        (HashOn::QueryArg, "hash_on_query_arg", "hash_fallback_query_arg"),
        (HashOn::UriCapture, "hash_on_uri_capture", "hash_fallback_uri_capture"),
    ];
    for (kind, on_key, fallback_key) in inputs {
        for (field, value, key) in [("hash_on", on, on_key), ("hash_fallback", fallback, fallback_key)] {
            if value == kind && !f.has(key) {
                f.err(key, "required field missing");
                f.err(ENTITY, format!("failed conditional validation given value of field '{field}'"));
            }
        }
    }
    for (a, b) in [("hash_on_header", "hash_fallback_header"), ("hash_on_query_arg", "hash_fallback_query_arg")] {
        let (x, y) = (f.get(a).and_then(Value::as_str), f.get(b).and_then(Value::as_str));
        if x.is_some() && x.map(str::to_ascii_lowercase) == y.map(str::to_ascii_lowercase) {
            f.err(ENTITY, format!("values of these fields must be distinct: '{a}', '{b}'"));
        }
    }
}

/// A Strait extension field naming one of `names`, or `None` when not set
/// (so that exports leave it out).
fn one_of<T>(f: &mut Fields<'_>, key: &str, names: &[&str], parse: fn(&str) -> Option<T>) -> Option<T> {
    let given = f.str(key);
    f.note_more(key, || json!({ "default": names[0], "one_of": names }));
    let given = given?;
    let parsed = parse(given);
    if parsed.is_none() {
        f.err(key, format!("expected one of: {}", names.join(", ")));
    }
    parsed
}
