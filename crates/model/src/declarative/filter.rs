//! Proxy-wasm filters in the configuration: Kong's `filter_chains` (top
//! level, or nested under a service or a route) and the filters a chain
//! names, each `config` checked by the filter's own schema
//! ([`FilterSchemas`], implemented where the filters are loaded).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::entities::*;
use crate::fields::ENTITY;

use super::flatten::{Builder, Origin};
use super::syntax::{check_name, meta, reference};
use super::{EntityError, ErrorKind};

/// The stream protocols a Wasm filter runs on (filters see TCP streams:
/// plain, terminated TLS, or TLS passed through).
pub const FILTER_PROTOCOLS: &[Protocol] = &[Protocol::Tcp, Protocol::Tls, Protocol::TlsPassthrough];

/// What Strait knows of the proxy-wasm filters this process loaded (Kong's
/// `wasm_filters`). Absent from the loader's options when `wasm` is off.
pub trait FilterSchemas: Send + Sync {
    /// Whether a filter of this name is loaded and enabled.
    fn has(&self, name: &str) -> bool;

    /// Whether no filter is loaded at all (Kong: "no wasm filters are available").
    fn is_empty(&self) -> bool;

    /// Whether the filter's module passed its checks (it compiles, declares
    /// the ABI, imports only host functions); the message says why not.
    fn usable(&self, name: &str) -> Result<(), String>;

    /// Checks a filter's `config` against its schema (its `config_schema`,
    /// or Kong's default: a string or nothing). The message is Kong's.
    fn check(&self, name: &str, config: Option<&Value>) -> Result<(), String>;

    /// The enabled filters' names, sorted.
    fn names(&self) -> Vec<String>;

    /// Kong's `/schemas/filters/{name}`: the filter's config schema (JSON
    /// Schema, draft 4).
    fn schema(&self, name: &str) -> Option<Value>;
}

/// Kong's messages for a filter chain or filter plugin that names both or
/// neither of its scopes.
const BOTH_SCOPES: &str = "only one or none of these fields must be set: 'service', 'route'";
const NO_SCOPE: &str = "at least one of these fields must be non-empty: 'service', 'route'";

impl Builder {
    /// A filter chain; `service` or `route` when nested under one.
    pub(crate) fn filter_chain(
        &mut self,
        v: &Value,
        path: String,
        service: Option<ServiceIdx>,
        route: Option<RouteIdx>,
    ) {
        let Some(obj) = self.object(v, "filter_chain", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        f.check_unknown(&["id", "name", "enabled", "route", "service", "filters", "tags", "created_at", "updated_at"]);
        let name = f.str("name").map(str::to_owned);
        if let Some(n) = &name {
            check_name(&mut f, "name", n);
        }
        let origin = Origin { path, name: name.clone() };
        let meta = meta(&mut f, "filter_chain", &origin);
        let enabled = f.bool_or("enabled", true);
        let route_ref = reference(&mut f, "route", EntityKind::Routes);
        let service_ref = reference(&mut f, "service", EntityKind::Services);
        if (service.is_some() && service_ref.is_some()) || (route.is_some() && route_ref.is_some()) {
            f.err(ENTITY, "a nested filter chain must not name its parent again");
        }
        let scopes = usize::from(service.is_some() || service_ref.is_some())
            + usize::from(route.is_some() || route_ref.is_some());
        if !self.describing {
            match scopes {
                0 => f.err(ENTITY, NO_SCOPE),
                2 => f.err(ENTITY, BOTH_SCOPES),
                _ => {}
            }
        }
        f.note("filters", || {
            json!({"type": "array", "required": true, "len_min": 1, "elements": {"type": "record", "fields": [
                {"name": {"type": "string", "required": true}},
                {"enabled": {"type": "boolean", "default": true}},
                {"config": {"type": "json"}},
            ]}})
        });
        let mut filters = Vec::new();
        match f.get("filters") {
            None => f.err("filters", "required field missing"),
            Some(Value::Array(items)) if items.is_empty() => f.err("filters", "length must be at least 1"),
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let at = format!("filters[{}]", i + 1);
                    let Value::Object(o) = item else {
                        f.err(at, "expected a record");
                        continue;
                    };
                    for key in o.keys().filter(|k| !["name", "enabled", "config"].contains(&k.as_str())) {
                        f.err(format!("{at}.{key}"), "unknown field");
                    }
                    let name = match o.get("name") {
                        None | Some(Value::Null) => {
                            f.err(format!("{at}.name"), "required field missing");
                            None
                        }
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(_) => {
                            f.err(format!("{at}.name"), "expected a string");
                            None
                        }
                    };
                    let enabled = match o.get("enabled") {
                        None | Some(Value::Null) => true,
                        Some(Value::Bool(b)) => *b,
                        Some(_) => {
                            f.err(format!("{at}.enabled"), "expected a boolean");
                            true
                        }
                    };
                    let config = o.get("config").filter(|c| !c.is_null()).cloned();
                    if let (Some(n), Some(filters)) = (&name, &self.options.filters) {
                        if !filters.has(n) {
                            f.err(format!("{at}.name"), "no such filter");
                        } else if let Err(message) = filters.usable(n) {
                            f.err(format!("{at}.name"), message);
                        } else if let Err(message) = filters.check(n, config.as_ref()) {
                            f.err(format!("{at}.config"), message);
                        }
                    }
                    filters.push(FilterEntry { name: name.unwrap_or_default(), enabled, config });
                }
            }
            Some(_) => f.err("filters", "expected an array"),
        }
        if !self.describing {
            if let Some(message) = self.wasm_unavailable() {
                f.err(ENTITY, message);
            }
        }
        self.done(f, "filter_chain", &origin);
        let i = self.config.filter_chains.len();
        self.config.filter_chains.push(FilterChain { meta, name, enabled, route, service, filters });
        if service_ref.is_some() || route_ref.is_some() {
            self.filter_chain_refs.push((i, service_ref, route_ref));
        }
        self.filter_chain_origin.push(origin);
    }

    /// Why filters cannot be configured at all, in Kong's words.
    pub(crate) fn wasm_unavailable(&self) -> Option<&'static str> {
        match &self.options.filters {
            None => Some("wasm support is not enabled"),
            Some(f) if f.is_empty() => Some("no wasm filters are available"),
            Some(_) => None,
        }
    }

    /// One chain per route and per service (Kong's unique foreign keys).
    pub(crate) fn check_filter_chains(&self, errors: &mut Vec<EntityError>) {
        let mut seen: HashMap<(&str, usize), usize> = HashMap::new();
        for (i, c) in self.config.filter_chains.iter().enumerate() {
            let origin = &self.filter_chain_origin[i];
            let scope = match (c.route, c.service) {
                (Some(r), None) => ("route", r.0),
                (None, Some(s)) => ("service", s.0),
                _ => continue,
            };
            if seen.insert(scope, i).is_some() {
                let id = match scope {
                    ("route", r) => self.config.routes[r].meta.id,
                    (_, s) => self.config.services[s].meta.id,
                };
                errors.push(EntityError {
                    path: origin.path.clone(),
                    entity: "filter_chain",
                    name: origin.name.clone(),
                    field: scope.0.to_owned(),
                    message: format!("UNIQUE violation detected on '{{{}={{id=\"{id}\"}}}}'", scope.0),
                    kind: ErrorKind::Unique { value: id.to_string() },
                });
            }
        }
    }
}
