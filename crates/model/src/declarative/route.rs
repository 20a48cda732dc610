//! Routes: protocols, the stream match fields (sources, destinations,
//! SNIs), and the HTTP-only fields Kong keeps at their defaults.

use serde_json::{Map, Value, json};

use crate::entities::*;
use crate::fields::{ENTITY, Fields, int_in};

use super::HTTP_ROUTE_FIELDS;
use super::flatten::{Builder, Origin};
use super::syntax::{check_name, meta, parse_ip_match, parse_sni, protocol_choices, reference};

impl Builder {
    pub(crate) fn route(&mut self, v: &Value, path: String, parent: Option<ServiceIdx>) {
        let Some(obj) = self.object(v, "route", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        // HTTP-only fields are kept at any valid value, as deck dumps carry them.
        let mut allowed = vec![
            "id",
            "name",
            "protocols",
            "sources",
            "destinations",
            "snis",
            "service",
            "preserve_host",
            "tags",
            "created_at",
            "updated_at",
            "plugins",
            "filter_chains",
        ];
        allowed.extend(HTTP_ROUTE_FIELDS);
        f.check_unknown(&allowed);
        let name = f.str("name").map(str::to_owned);
        if let Some(n) = &name {
            check_name(&mut f, "name", n);
        }
        let origin = Origin { path, name };
        let meta = meta(&mut f, "route", &origin);

        let mut protocols = ProtocolSet::default();
        let protocols_field = f.str_list("protocols");
        // Kong's default: an HTTP route.
        f.note_more("protocols", || json!({"default": ["http", "https"], "required": true}));
        match protocols_field {
            None => {
                protocols.insert(Protocol::Http);
                protocols.insert(Protocol::Https);
            }
            Some(list) if list.is_empty() => f.err("protocols", "length must be at least 1"),
            Some(list) => {
                for (i, p) in list.iter().enumerate() {
                    match Protocol::parse(p) {
                        Some(p) => protocols.insert(p),
                        None => f.err(format!("protocols[{}]", i + 1), protocol_choices()),
                    }
                }
            }
        }
        if !protocols.is_empty() && !is_one_protocol_family(protocols) {
            f.err(
                "protocols",
                "these sets are mutually exclusive: ('http', 'https'), ('tcp', 'tls', 'udp'), ('tls_passthrough'), ('grpc', 'grpcs')",
            );
        }

        let sources = endpoints(&mut f, "sources");
        let destinations = endpoints(&mut f, "destinations");
        let snis: Vec<SniPattern> = match f.str_list("snis") {
            None => Vec::new(),
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match parse_sni(s, false) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        f.err(format!("snis[{}]", i + 1), e);
                        None
                    }
                })
                .collect(),
        };
        let has_snis = f.non_empty("snis");
        let has_sources = f.non_empty("sources");
        let has_destinations = f.non_empty("destinations");

        // HTTP-only fields: type-checked, and refused on stream routes when set.
        f.str_list("methods");
        f.str_list("hosts");
        f.str_list("paths");
        f.note("headers", || json!({"type": "map", "keys": {"type": "string"}, "values": {"type": "array"}}));
        if f.has("headers") && !f.get("headers").is_some_and(Value::is_object) {
            f.err("headers", "expected a map");
        }
        f.bool("strip_path");
        f.int("regex_priority", i64::MIN, i64::MAX);
        if let Some(ph) = f.str("path_handling") {
            if ph != "v0" && ph != "v1" {
                f.err("path_handling", "expected one of: v0, v1");
            }
        }
        if let Some(code) = f.int("https_redirect_status_code", 0, 999) {
            if ![426, 301, 302, 307, 308].contains(&code) {
                f.err("https_redirect_status_code", "expected one of: 426, 301, 302, 307, 308");
            }
        }
        f.bool("request_buffering");
        f.bool("response_buffering");
        let preserve_host = f.bool_or("preserve_host", false);
        let http: Map<String, Value> =
            HTTP_ROUTE_FIELDS.iter().filter_map(|k| f.get(k).map(|v| ((*k).to_owned(), v.clone()))).collect();

        let stream = protocols.is_stream();
        if stream {
            for key in ["methods", "hosts", "paths", "headers"] {
                if f.non_empty(key) {
                    f.err(
                        key,
                        format!("cannot set '{key}' when 'protocols' is 'tcp', 'tls', 'tls_passthrough' or 'udp'"),
                    );
                }
            }
            if protocols.contains(Protocol::TlsPassthrough) {
                if !has_snis {
                    f.err(ENTITY, "must set snis when 'protocols' is 'tls_passthrough'");
                }
            } else if !has_snis && !has_sources && !has_destinations {
                f.err(
                    ENTITY,
                    "must set one of 'sources', 'destinations', 'snis' when 'protocols' is 'tcp', 'tls' or 'udp'",
                );
            }
        } else if !protocols.is_empty() {
            for key in ["sources", "destinations"] {
                if f.non_empty(key) {
                    f.err(key, format!("cannot set '{key}' when 'protocols' is 'http' or 'https'"));
                }
            }
            if !["methods", "hosts", "headers", "paths"].iter().any(|k| f.non_empty(k)) {
                f.err(
                    ENTITY,
                    "must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http' or 'https'",
                );
            }
        }
        if has_snis
            && protocols.iter().any(|p| {
                // `udp` with `snis` is Strait's QUIC routing (the SNI of the Initial).
                !matches!(
                    p,
                    Protocol::Grpcs | Protocol::Https | Protocol::Tls | Protocol::TlsPassthrough | Protocol::Udp
                )
            })
        {
            f.err(
                ENTITY,
                "'snis' can only be set when 'protocols' is 'grpcs', 'https', 'tls', 'tls_passthrough' or 'udp' (QUIC)",
            );
            f.err("snis", "length must be 0");
        }

        let service_ref = reference(&mut f, "service", EntityKind::Services);
        if parent.is_some() && service_ref.is_some() {
            f.err("service", "a route nested under a service must not name another service");
        }
        let plugins = f.nested("plugins").cloned();
        let chains = f.nested("filter_chains").cloned();
        self.done(f, "route", &origin);

        let idx = RouteIdx(self.config.routes.len());
        self.config.routes.push(Route {
            meta,
            name: origin.name.clone(),
            protocols,
            sources,
            destinations,
            snis,
            service: parent,
            preserve_host,
            http,
        });
        if let Some(r) = service_ref {
            self.route_service.push((idx, r));
        }
        self.route_origin.push(origin.clone());
        for (i, c) in chains.iter().flatten().enumerate() {
            self.filter_chain(c, format!("{}.filter_chains[{}]", origin.path, i + 1), None, Some(idx));
        }
        for (i, p) in plugins.iter().flatten().enumerate() {
            self.plugin(p, format!("{}.plugins[{}]", origin.path, i + 1), None, Some(idx));
        }
    }
}

pub(crate) fn is_one_protocol_family(set: ProtocolSet) -> bool {
    let families: [&[Protocol]; 4] = [
        &[Protocol::Http, Protocol::Https],
        &[Protocol::Tcp, Protocol::Tls, Protocol::Udp],
        &[Protocol::TlsPassthrough],
        &[Protocol::Grpc, Protocol::Grpcs],
    ];
    families.iter().any(|fam| set.iter().all(|p| fam.contains(&p)))
}

/// `sources` or `destinations`: a list of `{ip, port}` records.
pub(crate) fn endpoints(f: &mut Fields<'_>, key: &str) -> Vec<Endpoint> {
    let Some(items) = f.array(key) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{key}[{}]", i + 1);
        let Value::Object(o) = item else {
            f.err(at, "expected a record");
            continue;
        };
        let mut ok = true;
        for k in o.keys() {
            if k != "ip" && k != "port" {
                f.err(format!("{at}.{k}"), "unknown field");
                ok = false;
            }
        }
        let ip = match o.get("ip").filter(|v| !v.is_null()) {
            None => None,
            Some(Value::String(s)) => match parse_ip_match(s) {
                Some(m) => Some(m),
                None => {
                    f.err(format!("{at}.ip"), format!("invalid ip or cidr range: '{s}'"));
                    ok = false;
                    None
                }
            },
            Some(_) => {
                f.err(format!("{at}.ip"), "expected a string");
                ok = false;
                None
            }
        };
        let port = match o.get("port").filter(|v| !v.is_null()) {
            None => None,
            Some(v) => match int_in(v, 0, 65535) {
                Ok(p) => Some(p as u16),
                Err(e) => {
                    f.err(format!("{at}.port"), e);
                    ok = false;
                    None
                }
            },
        };
        if ok && ip.is_none() && port.is_none() {
            f.err(at, "at least one of these fields must be non-empty: 'ip', 'port'");
            continue;
        }
        if ok {
            out.push(Endpoint { ip, port });
        }
    }
    out
}
