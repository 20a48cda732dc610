//! Plugins: which names the `plugins` setting enables, each plugin's
//! `config` checked by its own schema ([`PluginSchemas`]), scopes and
//! protocols, and one instance per plugin per scope.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::entities::*;
use crate::fields::ENTITY;

use super::flatten::{Builder, Origin};
use super::syntax::{meta, protocol_choices, reference};
use super::{EntityError, ErrorKind};

/// Kong's bundled plugins, and Strait's own: the names `plugins = bundled` enables.
pub const BUNDLED_PLUGINS: &[&str] = &[
    "acl",
    "acme",
    "ai-prompt-decorator",
    "ai-prompt-guard",
    "ai-prompt-template",
    "ai-proxy",
    "ai-request-transformer",
    "ai-response-transformer",
    "aws-lambda",
    "azure-functions",
    "basic-auth",
    "bot-detection",
    "connection-limit",
    "connection-rate-limit",
    "correlation-id",
    "cors",
    "datadog",
    "file-log",
    "grpc-gateway",
    "grpc-web",
    "hmac-auth",
    "http-log",
    "ip-restriction",
    "jwt",
    "key-auth",
    "ldap-auth",
    "loggly",
    "mtls-auth",
    "oauth2",
    "opentelemetry",
    "post-function",
    "pre-function",
    "prometheus",
    "proxy-cache",
    "rate-limiting",
    "redirect",
    "request-size-limiting",
    "request-termination",
    "request-transformer",
    "response-ratelimiting",
    "response-transformer",
    "session",
    "standard-webhooks",
    "statsd",
    "syslog",
    "tcp-log",
    "udp-log",
    "zipkin",
];

/// Which plugin names a configuration may use (Kong's `plugins` setting).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginNames {
    pub bundled: bool,
    pub custom: Vec<String>,
}

impl Default for PluginNames {
    fn default() -> Self {
        PluginNames { bundled: true, custom: Vec::new() }
    }
}

impl PluginNames {
    pub fn allows(&self, name: &str) -> bool {
        (self.bundled && BUNDLED_PLUGINS.contains(&name)) || self.custom.iter().any(|c| c == name)
    }
}

/// A plugin config checked: filled in with defaults, or `(field, message)` errors.
pub type ConfigCheck = Result<Map<String, Value>, Vec<(String, String)>>;

/// What Strait knows of plugins' configurations: implemented by the plugin
/// registry, so that the declarative file and the Admin API check a plugin's
/// `config` the same way.
pub trait PluginSchemas: Send + Sync {
    /// Checks `config` for the plugin `name` and returns it with defaults
    /// filled in, or the errors as `(field under config, message)`. `None`
    /// when Strait does not run this plugin on streams (Kong's HTTP-only
    /// plugins): its config is kept as given.
    fn check(&self, name: &str, config: &Map<String, Value>) -> Option<ConfigCheck>;

    /// The stream protocols the plugin runs on; `None` when Strait does not run it.
    fn protocols(&self, _name: &str) -> Option<&'static [Protocol]> {
        None
    }
}

/// Kong's plugins whose schemas allow only HTTP protocols: on a stream route
/// they can never run, which Kong refuses ("must match the associated
/// route's protocols").
pub const HTTP_ONLY_PLUGINS: &[&str] = &[
    "acl",
    "acme",
    "ai-prompt-decorator",
    "ai-prompt-guard",
    "ai-prompt-template",
    "ai-proxy",
    "ai-request-transformer",
    "ai-response-transformer",
    "aws-lambda",
    "basic-auth",
    "bot-detection",
    "correlation-id",
    "cors",
    "hmac-auth",
    "jwt",
    "key-auth",
    "ldap-auth",
    "oauth2",
    "opentelemetry",
    "rate-limiting",
    "redirect",
    "request-size-limiting",
    "request-termination",
    "response-ratelimiting",
    "response-transformer",
    "standard-webhooks",
];

impl Builder {
    pub(crate) fn plugin(&mut self, v: &Value, path: String, service: Option<ServiceIdx>, route: Option<RouteIdx>) {
        let Some(obj) = self.object(v, "plugin", &path) else {
            return;
        };
        let mut f = self.fields(obj);
        f.check_unknown(&[
            "id",
            "name",
            "instance_name",
            "config",
            "service",
            "route",
            "consumer",
            "consumer_group",
            "protocols",
            "enabled",
            "tags",
            "ordering",
            "created_at",
            "updated_at",
        ]);
        let name = f.required_str("name").map(str::to_owned);
        // A Wasm filter configured as a plugin (Kong 3.9): its name is one
        // of the loaded filters, whatever the `plugins` setting says.
        let filter = name.as_deref().is_some_and(|n| self.options.filters.as_ref().is_some_and(|f| f.has(n)));
        if let Some(n) = &name {
            if !filter && !self.options.plugins.allows(n) {
                f.err("name", format!("plugin '{n}' not enabled; add it to the 'plugins' configuration property"));
            }
        }
        let origin = Origin { path, name: name.clone() };
        let instance_name = f.str("instance_name").map(str::to_owned);
        // A generated id names the plugin in its scope: Kong allows one
        // instance of a plugin per route, service and global scope.
        let scope = |field: &str, parent: Option<Uuid>| match (parent, f.get(field)) {
            (Some(id), _) => id.to_string(),
            (None, Some(v)) => v.to_string(),
            (None, None) => String::new(),
        };
        let id_key = format!(
            "{}|{}|service:{}|route:{}",
            name.as_deref().unwrap_or_default(),
            instance_name.as_deref().unwrap_or_default(),
            scope("service", service.map(|s| self.config.services[s.0].meta.id)),
            scope("route", route.map(|r| self.config.routes[r.0].meta.id)),
        );
        let meta = meta(&mut f, "plugin", &Origin { path: id_key, name: None });
        // Absent, it reads as `{}` (the plugin's defaults).
        f.note("config", || json!({"type": "record", "default": {}}));
        let config = match (&name, &self.options.filters) {
            (Some(n), Some(filters)) if filter => {
                let given = f.get("config").cloned();
                if let Err(message) = filters.usable(n) {
                    f.err("name", message);
                } else if let Err(message) = filters.check(n, given.as_ref()) {
                    f.err("config", message);
                }
                PluginConfig::Filter(given)
            }
            _ => PluginConfig::Record(self.plugin_record(&mut f, name.as_deref())),
        };
        for key in ["consumer", "consumer_group"] {
            if f.has(key) {
                f.err(key, "stream plugins cannot be scoped to consumers");
            }
        }
        let mut written = Vec::new();
        let protocols = f.str_list("protocols").map(|list| {
            let mut set = ProtocolSet::default();
            for (i, p) in list.iter().enumerate() {
                let parsed = Protocol::parse(p);
                match parsed {
                    Some(p) => set.insert(p),
                    None => f.err(format!("protocols[{}]", i + 1), protocol_choices()),
                }
                written.push(parsed);
            }
            set
        });
        let enabled = f.bool_or("enabled", true);
        let service_ref = reference(&mut f, "service", EntityKind::Services);
        let route_ref = reference(&mut f, "route", EntityKind::Routes);
        if (service.is_some() && service_ref.is_some()) || (route.is_some() && route_ref.is_some()) {
            f.err(ENTITY, "a nested plugin must not name its parent again");
        }
        if filter {
            // Kong's filter plugins apply to exactly one route or service.
            let on_service = service.is_some() || service_ref.is_some();
            let on_route = route.is_some() || route_ref.is_some();
            match (on_service, on_route) {
                (false, false) => f.err(ENTITY, "at least one of these fields must be non-empty: 'service', 'route'"),
                (true, true) => f.err(ENTITY, "only one or none of these fields must be set: 'service', 'route'"),
                _ => {}
            }
        }
        self.done(f, "plugin", &origin);
        let i = self.config.plugins.len();
        self.config.plugins.push(Plugin {
            meta,
            name: name.unwrap_or_default(),
            instance_name,
            config,
            service,
            route,
            protocols,
            enabled,
        });
        if service_ref.is_some() || route_ref.is_some() {
            self.plugin_refs.push((i, service_ref, route_ref));
        }
        self.plugin_origin.push(origin);
        self.plugin_protocols.push(written);
    }

    /// A native plugin's `config`: a record, checked (and filled in with
    /// defaults) by the plugin's schema.
    fn plugin_record(&self, f: &mut crate::fields::Fields<'_>, name: Option<&str>) -> Map<String, Value> {
        let mut config = match f.get("config") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(_) => {
                f.err("config", "expected a record");
                Map::new()
            }
        };
        if let (Some(n), Some(schemas)) = (name, &self.options.schemas) {
            match schemas.check(n, &config) {
                None => {}
                Some(Ok(filled)) => config = filled,
                Some(Err(errors)) => {
                    for (field, message) in errors {
                        let field = if field == ENTITY { field } else { format!("config.{field}") };
                        f.err(field, message);
                    }
                }
            }
        }
        config
    }

    /// Plugins: one instance of a plugin per scope (Kong's unique key), stream
    /// protocols the plugin can run on, and a route's plugins able to run on
    /// its protocols. Plugins Strait does not run on streams are kept, with a
    /// warning.
    pub(crate) fn check_plugins(&mut self, errors: &mut Vec<EntityError>) {
        let http = [Protocol::Grpc, Protocol::Grpcs, Protocol::Http, Protocol::Https];
        let mut seen = HashMap::new();
        for (i, p) in self.config.plugins.iter().enumerate() {
            let origin = &self.plugin_origin[i];
            let err = |field: &str, message: String| EntityError {
                path: origin.path.clone(),
                entity: "plugin",
                name: origin.name.clone(),
                field: field.into(),
                message,
                kind: ErrorKind::Schema,
            };
            let id_ref = |id: Option<Uuid>| id.map_or("null".to_owned(), |id| format!("{{id=\"{id}\"}}"));
            let route_id = p.route.map(|r| self.config.routes[r.0].meta.id);
            let service_id = p.service.map(|s| self.config.services[s.0].meta.id);
            // A plugin whose route or service does not exist already has its
            // error; its scope is unknown, so it is never a duplicate.
            if !self.plugin_broken.contains(&i) && seen.insert((p.name.clone(), route_id, service_id), i).is_some() {
                let message = format!(
                    "UNIQUE violation detected on '{{consumer=null,name=\"{}\",route={},service={}}}'",
                    p.name,
                    id_ref(route_id),
                    id_ref(service_id)
                );
                let kind = ErrorKind::Unique { value: p.name.clone() };
                errors.push(EntityError { kind, ..err("name", message) });
            }
            let runs_on = match &p.config {
                PluginConfig::Filter(_) => Some(super::FILTER_PROTOCOLS),
                PluginConfig::Record(_) => self.options.schemas.as_ref().and_then(|s| s.protocols(&p.name)),
            };
            if let Some(supported) = runs_on {
                for (j, proto) in self.plugin_protocols[i].iter().enumerate() {
                    let Some(proto) = *proto else { continue };
                    if proto.is_stream() && !supported.contains(&proto) {
                        let names: Vec<&str> = supported.iter().chain(http.iter()).map(|x| x.as_str()).collect();
                        errors.push(err(
                            &format!("protocols[{}]", j + 1),
                            format!("expected one of: {}", names.join(", ")),
                        ));
                    }
                }
            }
            let default: Option<Vec<Protocol>> = match runs_on {
                Some(list) => Some(list.to_vec()),
                None if HTTP_ONLY_PLUGINS.contains(&p.name.as_str()) => Some(http.to_vec()),
                None => None,
            };
            let effective: Option<Vec<Protocol>> = p.protocols.map(|set| set.iter().collect()).or(default);
            if let (Some(r), Some(effective)) = (p.route, &effective) {
                let route = &self.config.routes[r.0];
                if route.protocols.is_stream() && !effective.iter().any(|x| route.protocols.contains(*x)) {
                    errors.push(err("protocols", "must match the associated route's protocols".to_owned()));
                }
            }
            if runs_on.is_none() && p.enabled && BUNDLED_PLUGINS.contains(&p.name.as_str()) {
                self.warnings
                    .push(format!("plugin '{}' ({}) is kept but does not run on stream sessions", p.name, origin.path));
            }
        }
    }
}
