//! Kong's declarative configuration (`_format_version` "3.0", "2.1", "1.1"),
//! YAML or JSON, turned into a validated [`Config`].
//!
//! Loading runs in three steps: flatten nested entities into per-type lists
//! (remembering each one's parent), parse every entity on its own, then resolve
//! references and check uniqueness. Every problem found is reported, each
//! naming the entity (by path and name), the field and the reason.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::entities::*;
use crate::fields::{ENTITY, Fields, int_in};
use crate::pem;

/// One problem with one entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityError {
    /// Where the entity sits in the file, e.g. `services[1].routes[2]` (1-based, as Kong counts).
    pub path: String,
    /// Kong's singular entity name: `service`, `route`, ….
    pub entity: &'static str,
    pub name: Option<String>,
    /// The field, or `@entity` for a rule about the whole entity.
    pub field: String,
    pub message: String,
}

impl fmt::Display for EntityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.entity, self.path)?;
        if let Some(name) = &self.name {
            write!(f, " (name '{name}')")?;
        }
        write!(f, ": {}: {}", self.field, self.message)
    }
}

/// Why a declarative configuration was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoadError {
    #[error("cannot parse the declarative configuration: {0}")]
    Syntax(String),
    #[error("invalid declarative configuration ({} error{}):\n{}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<EntityError>),
}

/// A loaded configuration and what was accepted but will not be used.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Reads YAML or JSON text into a generic value. The only place that knows
/// which YAML library Strait uses.
pub fn parse_text(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        if let Ok(v) = serde_json::from_str(text) {
            return Ok(v);
        }
    }
    // No input snippets in messages: the input may hold private keys.
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|e| e.to_string())
}

/// Parses and validates a whole declarative file.
pub fn load_str(text: &str) -> Result<Loaded, LoadError> {
    let value = parse_text(text).map_err(LoadError::Syntax)?;
    load_value(&value)
}

const FORMAT_VERSIONS: [&str; 3] = ["1.1", "2.1", "3.0"];
const ENTITY_KEYS: [&str; 8] =
    ["services", "routes", "certificates", "snis", "ca_certificates", "upstreams", "targets", "plugins"];
/// Route fields that only HTTP routes use; kept as given.
pub const HTTP_ROUTE_FIELDS: [&str; 10] = [
    "methods",
    "hosts",
    "paths",
    "headers",
    "strip_path",
    "regex_priority",
    "path_handling",
    "https_redirect_status_code",
    "request_buffering",
    "response_buffering",
];
/// Kong entities that have no meaning for a stream gateway; accepted and ignored.
const IGNORED_KEYS: [&str; 9] = [
    "consumers",
    "consumer_groups",
    "vaults",
    "keys",
    "key_sets",
    "partials",
    "filter_chains",
    "workspaces",
    "licenses",
];
const META_KEYS: [&str; 6] = ["_format_version", "_transform", "_comment", "_ignore", "_info", "_workspace"];

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

/// What loading depends on besides the document.
#[derive(Clone, Default)]
pub struct Options {
    pub plugins: PluginNames,
    pub schemas: Option<std::sync::Arc<dyn PluginSchemas>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options").field("plugins", &self.plugins).field("schemas", &self.schemas.is_some()).finish()
    }
}

/// Validates a parsed declarative value with the default options.
pub fn load_value(root: &Value) -> Result<Loaded, LoadError> {
    load_value_with(root, &Options::default())
}

/// As [`load_str`], with explicit options.
pub fn load_str_with(text: &str, options: &Options) -> Result<Loaded, LoadError> {
    let value = parse_text(text).map_err(LoadError::Syntax)?;
    load_value_with(&value, options)
}

/// Validates a parsed declarative value.
pub fn load_value_with(root: &Value, options: &Options) -> Result<Loaded, LoadError> {
    let mut b = Builder { options: options.clone(), ..Builder::default() };
    let Value::Object(top) = root else {
        return Err(LoadError::Invalid(vec![EntityError {
            path: "/".into(),
            entity: "declarative configuration",
            name: None,
            field: ENTITY.into(),
            message: "expected a record (an object of entity lists)".into(),
        }]));
    };
    b.top_level(top);
    b.finish()
}

/// A reference to another entity, as written: by id or by name.
#[derive(Debug, Clone)]
enum Ref {
    Id(Uuid),
    Name(String),
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ref::Id(id) => write!(f, "{id}"),
            Ref::Name(n) => f.write_str(n),
        }
    }
}

/// Where an entity is, for error messages.
#[derive(Debug, Clone)]
struct Origin {
    path: String,
    name: Option<String>,
}

#[derive(Default)]
struct Builder {
    options: Options,
    errors: Vec<EntityError>,
    warnings: Vec<String>,
    config: Config,
    service_origin: Vec<Origin>,
    route_origin: Vec<Origin>,
    cert_origin: Vec<Origin>,
    sni_origin: Vec<Origin>,
    ca_origin: Vec<Origin>,
    upstream_origin: Vec<Origin>,
    target_origin: Vec<Origin>,
    plugin_origin: Vec<Origin>,
    /// Each plugin's `protocols` as written (in order, unparsable ones as
    /// `None`), for errors that name `protocols[i]`.
    plugin_protocols: Vec<Vec<Option<Protocol>>>,
    /// Plugins naming a route or service that does not exist (already an error).
    plugin_broken: std::collections::HashSet<usize>,
    // References waiting for every entity to be known.
    route_service: Vec<(RouteIdx, Ref)>,
    service_cas: Vec<(ServiceIdx, Vec<Ref>)>,
    service_client_cert: Vec<(ServiceIdx, Ref)>,
    upstream_client_cert: Vec<(UpstreamIdx, Ref)>,
    sni_cert: Vec<(usize, Ref)>,
    target_upstream: Vec<(usize, Ref)>,
    plugin_refs: Vec<(usize, Option<Ref>, Option<Ref>)>,
}

impl Builder {
    fn push_errors(&mut self, entity: &'static str, origin: &Origin, errors: Vec<(String, String)>) {
        for (field, message) in errors {
            self.errors.push(EntityError {
                path: origin.path.clone(),
                entity,
                name: origin.name.clone(),
                field,
                message,
            });
        }
    }

    fn top_level(&mut self, top: &Map<String, Value>) {
        let root = Origin { path: "/".into(), name: None };
        let mut f = Fields::new(top);
        let allowed: Vec<&str> =
            META_KEYS.iter().chain(ENTITY_KEYS.iter()).chain(IGNORED_KEYS.iter()).copied().collect();
        f.check_unknown(&allowed);
        match f.get("_format_version") {
            None => f.err("_format_version", "required field missing"),
            Some(Value::String(v)) if FORMAT_VERSIONS.contains(&v.as_str()) => {}
            Some(Value::String(v)) => f.err(
                "_format_version",
                format!("unsupported declarative configuration _format_version '{v}' (expected one of: 1.1, 2.1, 3.0)"),
            ),
            Some(_) => f.err("_format_version", "expected a string"),
        }
        f.bool("_transform");
        for key in IGNORED_KEYS {
            if f.has(key) {
                self.warnings.push(format!("'{key}' is ignored: Strait's stream proxy has no use for it"));
            }
        }
        let lists: Vec<(&str, Option<&Vec<Value>>)> = ENTITY_KEYS.iter().map(|k| (*k, f.array(k))).collect();
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("declarative configuration", &root, errors);

        // Order matters for references into parents: certificates and CA
        // certificates before services, services before routes, routes before plugins.
        let get = |name: &str| lists.iter().find(|(k, _)| *k == name).and_then(|(_, v)| *v);
        for (i, v) in get("ca_certificates").into_iter().flatten().enumerate() {
            self.ca_certificate(v, format!("ca_certificates[{}]", i + 1));
        }
        for (i, v) in get("certificates").into_iter().flatten().enumerate() {
            self.certificate(v, format!("certificates[{}]", i + 1));
        }
        for (i, v) in get("snis").into_iter().flatten().enumerate() {
            self.sni(v, format!("snis[{}]", i + 1), None);
        }
        for (i, v) in get("upstreams").into_iter().flatten().enumerate() {
            self.upstream(v, format!("upstreams[{}]", i + 1));
        }
        for (i, v) in get("targets").into_iter().flatten().enumerate() {
            self.target(v, format!("targets[{}]", i + 1), None);
        }
        for (i, v) in get("services").into_iter().flatten().enumerate() {
            self.service(v, format!("services[{}]", i + 1));
        }
        for (i, v) in get("routes").into_iter().flatten().enumerate() {
            self.route(v, format!("routes[{}]", i + 1), None);
        }
        for (i, v) in get("plugins").into_iter().flatten().enumerate() {
            self.plugin(v, format!("plugins[{}]", i + 1), None, None);
        }
    }

    /// The object behind `v`, or an error on the entity's path.
    fn object<'v>(&mut self, v: &'v Value, entity: &'static str, path: &str) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(o) => Some(o),
            _ => {
                self.errors.push(EntityError {
                    path: path.to_owned(),
                    entity,
                    name: None,
                    field: ENTITY.into(),
                    message: "expected a record".into(),
                });
                None
            }
        }
    }

    fn service(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "service", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
        f.check_unknown(&[
            "id",
            "name",
            "protocol",
            "host",
            "port",
            "path",
            "url",
            "retries",
            "connect_timeout",
            "read_timeout",
            "write_timeout",
            "tls_verify",
            "tls_verify_depth",
            "ca_certificates",
            "client_certificate",
            "enabled",
            "proxy_protocol",
            "tags",
            "created_at",
            "updated_at",
            "routes",
            "plugins",
        ]);
        let name = f.str("name").map(str::to_owned);
        if let Some(n) = &name {
            check_name(&mut f, "name", n);
        }
        let origin = Origin { path, name };
        let meta = meta(&mut f, "service", &origin);

        let mut protocol = Protocol::Http;
        let mut host = None;
        let mut port = None;
        let mut path_field = None;
        if let Some(url) = f.str("url") {
            match parse_url(url) {
                Ok(u) => {
                    protocol = u.protocol;
                    host = Some(u.host);
                    port = Some(u.port);
                    path_field = u.path;
                }
                Err(e) => f.err("url", e),
            }
        } else {
            if let Some(p) = f.str("protocol") {
                match Protocol::parse(p) {
                    Some(p) => protocol = p,
                    None => f.err("protocol", protocol_choices()),
                }
            }
            match f.required_str("host") {
                Some(h) if is_host(h) => host = Some(h.to_ascii_lowercase()),
                Some(h) => f.err("host", format!("invalid value '{h}': not a valid hostname or IP address")),
                None => {}
            }
            port = f.int("port", 0, 65535).map(|p| p as u16);
            path_field = f.str("path").map(str::to_owned);
        }
        let port = port.unwrap_or(80);
        if path_field.is_some()
            && matches!(protocol, Protocol::Tcp | Protocol::Tls | Protocol::Udp | Protocol::Grpc | Protocol::Grpcs)
        {
            f.err("path", "value must be null");
            f.err(ENTITY, "failed conditional validation given value of field 'protocol'");
        }
        if protocol == Protocol::TlsPassthrough {
            f.err(
                "protocol",
                "a service cannot use 'tls_passthrough'; use 'tcp' for a tls_passthrough route's service",
            );
        }
        let retries = f.int("retries", 0, 32767).unwrap_or(5) as u16;
        let timeout = |f: &mut Fields<'_>, key: &str| {
            Duration::from_millis(f.int(key, 1, 2_147_483_646).unwrap_or(60_000) as u64)
        };
        let connect_timeout = timeout(&mut f, "connect_timeout");
        let read_timeout = timeout(&mut f, "read_timeout");
        let write_timeout = timeout(&mut f, "write_timeout");
        let tls_verify = f.bool("tls_verify");
        let tls_verify_depth = f.int("tls_verify_depth", 0, 64).map(|d| d as u8);
        let cas: Vec<Ref> = match f.get("ca_certificates") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item.as_str().and_then(|s| Uuid::parse_str(s).ok()) {
                    Some(id) => Some(Ref::Id(id)),
                    None => {
                        f.err(format!("ca_certificates[{}]", i + 1), "expected a valid UUID");
                        None
                    }
                })
                .collect(),
            Some(_) => {
                f.err("ca_certificates", "expected an array");
                Vec::new()
            }
        };
        let client_cert = reference(&mut f, "client_certificate");
        let tls_capable = matches!(protocol, Protocol::Tls | Protocol::Https);
        if !tls_capable {
            let mut conditional = false;
            for key in ["tls_verify", "tls_verify_depth", "ca_certificates", "client_certificate"] {
                if f.has(key) {
                    f.err(key, "value must be null");
                    conditional = true;
                }
            }
            if conditional {
                f.err(ENTITY, "failed conditional validation given value of field 'protocol'");
            }
        }
        let enabled = f.bool("enabled").unwrap_or(true);
        let proxy_protocol = match f.str("proxy_protocol") {
            None | Some("off") => ProxyProtocolOut::Off,
            Some("v1") => ProxyProtocolOut::V1,
            Some("v2") => ProxyProtocolOut::V2,
            Some(_) => {
                f.err("proxy_protocol", "expected one of: off, v1, v2");
                ProxyProtocolOut::Off
            }
        };
        if proxy_protocol != ProxyProtocolOut::Off && !matches!(protocol, Protocol::Tcp | Protocol::Tls) {
            f.err("proxy_protocol", "only tcp and tls services can send a PROXY protocol header");
        }
        let routes = f.array("routes").cloned();
        let plugins = f.array("plugins").cloned();
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("service", &origin, errors);

        let idx = ServiceIdx(self.config.services.len());
        self.config.services.push(Service {
            meta,
            name: origin.name.clone(),
            protocol,
            host: host.unwrap_or_default(),
            port,
            path: path_field,
            retries,
            connect_timeout,
            read_timeout,
            write_timeout,
            tls_verify,
            tls_verify_depth,
            ca_certificates: Vec::new(),
            client_certificate: None,
            enabled,
            proxy_protocol,
        });
        if !cas.is_empty() {
            self.service_cas.push((idx, cas));
        }
        if let Some(r) = client_cert {
            self.service_client_cert.push((idx, r));
        }
        self.service_origin.push(origin.clone());
        for (i, r) in routes.iter().flatten().enumerate() {
            self.route(r, format!("{}.routes[{}]", origin.path, i + 1), Some(idx));
        }
        for (i, p) in plugins.iter().flatten().enumerate() {
            self.plugin(p, format!("{}.plugins[{}]", origin.path, i + 1), Some(idx), None);
        }
    }

    fn route(&mut self, v: &Value, path: String, parent: Option<ServiceIdx>) {
        let Some(obj) = self.object(v, "route", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
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
        match f.str_list("protocols") {
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
        let preserve_host = f.bool("preserve_host").unwrap_or(false);
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

        let service_ref = reference(&mut f, "service");
        if parent.is_some() && service_ref.is_some() {
            f.err("service", "a route nested under a service must not name another service");
        }
        let plugins = f.array("plugins").cloned();
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("route", &origin, errors);

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
        for (i, p) in plugins.iter().flatten().enumerate() {
            self.plugin(p, format!("{}.plugins[{}]", origin.path, i + 1), None, Some(idx));
        }
    }

    fn certificate(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "certificate", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
        f.check_unknown(&["id", "cert", "key", "cert_alt", "key_alt", "tags", "snis", "created_at", "updated_at"]);
        let origin = Origin { path, name: None };
        let meta = meta(&mut f, "certificate", &origin);
        let cert = f.required_str("cert");
        let key = f.required_str("key");
        let pair = match (cert, key) {
            (Some(c), Some(k)) => match pem::key_pair(c, k, "certificate does not match key") {
                Ok(p) => Some(p),
                Err(errs) => {
                    for (field, msg) in errs {
                        f.err(field, msg);
                    }
                    None
                }
            },
            _ => None,
        };
        let alt = match (f.str("cert_alt"), f.str("key_alt")) {
            (None, None) => None,
            (Some(c), Some(k)) => match pem::key_pair(c, k, "alternative certificate does not match key") {
                Ok(alt) => {
                    if pair.as_ref().is_some_and(|p| p.key_type == alt.key_type) {
                        f.err(
                            ENTITY,
                            "certificate and alternative certificate need to have different type (e.g. RSA and ECDSA), the provided certificates were both of the same type",
                        );
                    }
                    Some(alt)
                }
                Err(errs) => {
                    for (field, msg) in errs {
                        let field = match field {
                            "cert" => "cert_alt",
                            "key" => "key_alt",
                            other => other,
                        };
                        f.err(field, msg);
                    }
                    None
                }
            },
            _ => {
                f.err(ENTITY, "all or none of these fields must be set: 'cert_alt', 'key_alt'");
                None
            }
        };
        let snis = f.array("snis").cloned();
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("certificate", &origin, errors);
        let Some(pair) = pair else {
            return;
        };
        let idx = CertificateIdx(self.config.certificates.len());
        self.config.certificates.push(Certificate { meta, pair, alt });
        self.cert_origin.push(origin.clone());
        for (i, s) in snis.iter().flatten().enumerate() {
            let path = format!("{}.snis[{}]", origin.path, i + 1);
            match s {
                // The Admin API's shorthand: a list of names.
                Value::String(name) => {
                    let mut obj = Map::new();
                    obj.insert("name".into(), Value::String(name.clone()));
                    self.sni(&Value::Object(obj), path, Some(idx));
                }
                other => self.sni(other, path, Some(idx)),
            }
        }
    }

    fn sni(&mut self, v: &Value, path: String, parent: Option<CertificateIdx>) {
        let Some(obj) = self.object(v, "sni", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
        f.check_unknown(&["id", "name", "certificate", "tags", "created_at", "updated_at"]);
        let raw_name = f.required_str("name");
        let origin = Origin { path, name: raw_name.map(str::to_owned) };
        let meta = meta(&mut f, "sni", &origin);
        let name = raw_name.and_then(|n| match parse_sni(n, true) {
            Ok(p) => Some(p),
            Err(e) => {
                f.err("name", e);
                None
            }
        });
        let cert_ref = reference(&mut f, "certificate");
        if parent.is_none() && cert_ref.is_none() {
            f.err("certificate", "required field missing");
        }
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("sni", &origin, errors);
        let Some(name) = name else {
            return;
        };
        let i = self.config.snis.len();
        self.config.snis.push(Sni { meta, name, certificate: parent.unwrap_or(CertificateIdx(usize::MAX)) });
        if parent.is_none() {
            if let Some(r) = cert_ref {
                self.sni_cert.push((i, r));
            }
        }
        self.sni_origin.push(origin);
    }

    fn ca_certificate(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "ca_certificate", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
        f.check_unknown(&["id", "cert", "cert_digest", "tags", "created_at", "updated_at"]);
        let origin = Origin { path, name: None };
        let meta = meta(&mut f, "ca_certificate", &origin);
        let cert = f.required_str("cert").and_then(|c| match pem::ca_certificate(c) {
            Ok(der) => Some((der, c.to_owned())),
            Err(e) => {
                f.err("cert", e);
                None
            }
        });
        let cert_digest = f.str("cert_digest").map(str::to_owned);
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("ca_certificate", &origin, errors);
        if let Some((cert, pem)) = cert {
            self.config.ca_certificates.push(CaCertificate { meta, cert, pem, cert_digest });
            self.ca_origin.push(origin);
        }
    }

    fn upstream(&mut self, v: &Value, path: String) {
        let Some(obj) = self.object(v, "upstream", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
        const KNOWN: [&str; 20] = [
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
        let algorithm = match f.str("algorithm") {
            None => Algorithm::RoundRobin,
            Some(a) => Algorithm::parse(a).unwrap_or_else(|| {
                f.err("algorithm", "expected one of: consistent-hashing, least-connections, round-robin, latency");
                Algorithm::RoundRobin
            }),
        };
        let hash = |f: &mut Fields<'_>, key: &str| match f.str(key) {
            None => HashOn::None,
            Some(h) => HashOn::parse(h).unwrap_or_else(|| {
                f.err(key, format!("expected one of: {}", HashOn::NAMES.join(", ")));
                HashOn::None
            }),
        };
        let hash_on = hash(&mut f, "hash_on");
        let hash_fallback = hash(&mut f, "hash_fallback");
        hash_rules(&mut f, hash_on, hash_fallback);
        let slots = f.int("slots", 10, 65536).unwrap_or(10_000) as u32;
        let host_header = f.str("host_header").map(str::to_owned);
        let client_cert = reference(&mut f, "client_certificate");
        let use_srv_name = f.bool("use_srv_name").unwrap_or(false);
        let healthchecks = Healthchecks::parse(f.get("healthchecks")).unwrap_or_else(|errors| {
            for (field, message) in errors {
                f.err(field, message);
            }
            Healthchecks::default()
        });
        let targets = f.array("targets").cloned();
        let extra: Map<String, Value> = obj
            .iter()
            .filter(|(k, v)| (k.starts_with("hash_on_") || k.starts_with("hash_fallback_")) && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("upstream", &origin, errors);
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

    fn target(&mut self, v: &Value, path: String, parent: Option<UpstreamIdx>) {
        let Some(obj) = self.object(v, "target", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
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
        let weight = f.int("weight", 0, 65535).unwrap_or(100) as u16;
        let up_ref = reference(&mut f, "upstream");
        if parent.is_none() && up_ref.is_none() {
            f.err("upstream", "required field missing");
        }
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("target", &origin, errors);
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

    fn plugin(&mut self, v: &Value, path: String, service: Option<ServiceIdx>, route: Option<RouteIdx>) {
        let Some(obj) = self.object(v, "plugin", &path) else {
            return;
        };
        let mut f = Fields::new(obj);
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
        if let Some(n) = &name {
            if !self.options.plugins.allows(n) {
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
        let mut config = match f.get("config") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(o)) => o.clone(),
            Some(_) => {
                f.err("config", "expected a record");
                Map::new()
            }
        };
        if let (Some(n), Some(schemas)) = (&name, &self.options.schemas) {
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
        let enabled = f.bool("enabled").unwrap_or(true);
        let service_ref = reference(&mut f, "service");
        let route_ref = reference(&mut f, "route");
        if (service.is_some() && service_ref.is_some()) || (route.is_some() && route_ref.is_some()) {
            f.err(ENTITY, "a nested plugin must not name its parent again");
        }
        let errors = std::mem::take(&mut f.errors);
        self.push_errors("plugin", &origin, errors);
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

    /// Plugins: one instance of a plugin per scope (Kong's unique key), stream
    /// protocols the plugin can run on, and a route's plugins able to run on
    /// its protocols. Plugins Strait does not run on streams are kept, with a
    /// warning.
    fn check_plugins(&mut self, errors: &mut Vec<EntityError>) {
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
            };
            let id_ref = |id: Option<Uuid>| id.map_or("null".to_owned(), |id| format!("{{id=\"{id}\"}}"));
            let route_id = p.route.map(|r| self.config.routes[r.0].meta.id);
            let service_id = p.service.map(|s| self.config.services[s.0].meta.id);
            // A plugin whose route or service does not exist already has its
            // error; its scope is unknown, so it is never a duplicate.
            if !self.plugin_broken.contains(&i) && seen.insert((p.name.clone(), route_id, service_id), i).is_some() {
                errors.push(err(
                    "name",
                    format!(
                        "UNIQUE violation detected on '{{consumer=null,name=\"{}\",route={},service={}}}'",
                        p.name,
                        id_ref(route_id),
                        id_ref(service_id)
                    ),
                ));
            }
            let runs_on = self.options.schemas.as_ref().and_then(|s| s.protocols(&p.name));
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

    /// Resolves references, checks uniqueness, and returns the result.
    fn finish(mut self) -> Result<Loaded, LoadError> {
        let services = index(
            "service",
            &self.config.services,
            &self.service_origin,
            |s| s.name.clone(),
            |s| &s.meta,
            &mut self.errors,
        );
        let routes =
            index("route", &self.config.routes, &self.route_origin, |r| r.name.clone(), |r| &r.meta, &mut self.errors);
        let certs =
            index("certificate", &self.config.certificates, &self.cert_origin, |_| None, |c| &c.meta, &mut self.errors);
        let cas = index(
            "ca_certificate",
            &self.config.ca_certificates,
            &self.ca_origin,
            |_| None,
            |c| &c.meta,
            &mut self.errors,
        );
        let upstreams = index(
            "upstream",
            &self.config.upstreams,
            &self.upstream_origin,
            |u| Some(u.name.clone()),
            |u| &u.meta,
            &mut self.errors,
        );
        index("sni", &self.config.snis, &self.sni_origin, |s| Some(s.name.to_string()), |s| &s.meta, &mut self.errors);
        index("target", &self.config.targets, &self.target_origin, |_| None, |t| &t.meta, &mut self.errors);
        index(
            "plugin",
            &self.config.plugins,
            &self.plugin_origin,
            |p| p.instance_name.clone(),
            |p| &p.meta,
            &mut self.errors,
        );

        let mut errors = std::mem::take(&mut self.errors);
        let mut missing = |entity: &'static str, origin: &Origin, field: &str, what: &str, r: &Ref| {
            errors.push(EntityError {
                path: origin.path.clone(),
                entity,
                name: origin.name.clone(),
                field: field.to_owned(),
                message: format!("could not find {what} '{r}'"),
            });
        };

        for (idx, r) in std::mem::take(&mut self.route_service) {
            match services.find(&r) {
                Some(s) => self.config.routes[idx.0].service = Some(ServiceIdx(s)),
                None => missing("route", &self.route_origin[idx.0], "service", "service", &r),
            }
        }
        for (idx, refs) in std::mem::take(&mut self.service_cas) {
            for (i, r) in refs.iter().enumerate() {
                match cas.find(r) {
                    Some(c) => self.config.services[idx.0].ca_certificates.push(CaCertificateIdx(c)),
                    None => missing(
                        "service",
                        &self.service_origin[idx.0],
                        &format!("ca_certificates[{}]", i + 1),
                        "CA certificate",
                        r,
                    ),
                }
            }
        }
        for (idx, r) in std::mem::take(&mut self.service_client_cert) {
            match certs.find(&r) {
                Some(c) => self.config.services[idx.0].client_certificate = Some(CertificateIdx(c)),
                None => missing("service", &self.service_origin[idx.0], "client_certificate", "certificate", &r),
            }
        }
        for (idx, r) in std::mem::take(&mut self.upstream_client_cert) {
            match certs.find(&r) {
                Some(c) => self.config.upstreams[idx.0].client_certificate = Some(CertificateIdx(c)),
                None => missing("upstream", &self.upstream_origin[idx.0], "client_certificate", "certificate", &r),
            }
        }
        for (i, r) in std::mem::take(&mut self.sni_cert) {
            match certs.find(&r) {
                Some(c) => self.config.snis[i].certificate = CertificateIdx(c),
                None => missing("sni", &self.sni_origin[i], "certificate", "certificate", &r),
            }
        }
        for (i, r) in std::mem::take(&mut self.target_upstream) {
            match upstreams.find(&r) {
                Some(u) => self.config.targets[i].upstream = UpstreamIdx(u),
                None => missing("target", &self.target_origin[i], "upstream", "upstream", &r),
            }
        }
        for (i, s, r) in std::mem::take(&mut self.plugin_refs) {
            if let Some(s) = s {
                match services.find(&s) {
                    Some(x) => self.config.plugins[i].service = Some(ServiceIdx(x)),
                    None => {
                        missing("plugin", &self.plugin_origin[i], "service", "service", &s);
                        self.plugin_broken.insert(i);
                    }
                }
            }
            if let Some(r) = r {
                match routes.find(&r) {
                    Some(x) => self.config.plugins[i].route = Some(RouteIdx(x)),
                    None => {
                        missing("plugin", &self.plugin_origin[i], "route", "route", &r);
                        self.plugin_broken.insert(i);
                    }
                }
            }
        }

        // One target per address within an upstream, as Kong's unique key.
        let mut seen = HashMap::new();
        for (i, t) in self.config.targets.iter().enumerate() {
            let Some(up) = self.config.upstreams.get(t.upstream.0) else {
                continue;
            };
            let key = (t.upstream.0, t.host.to_ascii_lowercase(), t.port);
            if seen.insert(key, i).is_some() {
                let origin = &self.target_origin[i];
                errors.push(EntityError {
                    path: origin.path.clone(),
                    entity: "target",
                    name: origin.name.clone(),
                    field: "target".into(),
                    message: format!(
                        "UNIQUE violation detected on '{{target=\"{}\",upstream={{id=\"{}\"}}}}'",
                        t.authority(),
                        up.meta.id
                    ),
                });
            }
        }
        self.check_plugins(&mut errors);
        // Combinations Kong accepts but that cannot do what they say.
        for route in &self.config.routes {
            let Some(svc) = route.service.map(|s| &self.config.services[s.0]) else {
                continue;
            };
            if route.protocols.is_stream() && !svc.protocol.is_stream() {
                self.warnings.push(format!(
                    "route '{}' is a stream route but its service '{}' uses protocol '{}': its sessions will be closed with status 503",
                    route.label(),
                    svc.label(),
                    svc.protocol
                ));
            }
            if route.protocols.contains(Protocol::TlsPassthrough) && svc.protocol == Protocol::Tls {
                self.warnings.push(format!(
                    "route '{}' passes TLS through untouched; the 'tls' protocol of service '{}' is not applied to it",
                    route.label(),
                    svc.label()
                ));
            }
        }

        if errors.is_empty() {
            Ok(Loaded { config: self.config, warnings: self.warnings })
        } else {
            Err(LoadError::Invalid(errors))
        }
    }
}

/// Lookup tables by id and by name for one entity type.
struct Index {
    by_id: HashMap<Uuid, usize>,
    by_name: HashMap<String, usize>,
}

impl Index {
    fn find(&self, r: &Ref) -> Option<usize> {
        match r {
            Ref::Id(id) => self.by_id.get(id).copied(),
            // A name that happens to be a UUID string was parsed as an id.
            Ref::Name(n) => self.by_name.get(n).copied(),
        }
    }
}

fn index<T>(
    entity: &'static str,
    items: &[T],
    origins: &[Origin],
    name: impl Fn(&T) -> Option<String>,
    meta: impl Fn(&T) -> &Meta,
    errors: &mut Vec<EntityError>,
) -> Index {
    let mut ix = Index { by_id: HashMap::new(), by_name: HashMap::new() };
    for (i, item) in items.iter().enumerate() {
        let origin = &origins[i];
        let id = meta(item).id;
        if ix.by_id.insert(id, i).is_some() {
            errors.push(EntityError {
                path: origin.path.clone(),
                entity,
                name: origin.name.clone(),
                field: "id".into(),
                message: format!("uniqueness violation: 'id' {id} is used by another {entity}"),
            });
        }
        if let Some(n) = name(item) {
            if ix.by_name.insert(n.clone(), i).is_some() {
                errors.push(EntityError {
                    path: origin.path.clone(),
                    entity,
                    name: origin.name.clone(),
                    field: "name".into(),
                    message: format!("UNIQUE violation detected on '{{name=\"{n}\"}}'"),
                });
            }
        }
    }
    ix
}

/// Namespace for ids generated for entities that have none, so the same file
/// always yields the same ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_2e8a_51c3_4d7e_9a0f_3c5d_7e9b_1a2c);

fn meta(f: &mut Fields<'_>, entity: &str, origin: &Origin) -> Meta {
    let id = match f.get("id") {
        None => None,
        Some(Value::String(s)) => match Uuid::parse_str(s) {
            Ok(id) => Some(id),
            Err(_) => {
                f.err("id", "expected a valid UUID");
                None
            }
        },
        Some(_) => {
            f.err("id", "expected a string");
            None
        }
    };
    let id = id.unwrap_or_else(|| {
        let key = match &origin.name {
            Some(n) => format!("{entity}:name:{n}"),
            None => format!("{entity}:path:{}", origin.path),
        };
        Uuid::new_v5(&ID_NAMESPACE, key.as_bytes())
    });
    let tags = f.str_list("tags").unwrap_or_default().into_iter().map(str::to_owned).collect::<Vec<_>>();
    for (i, t) in tags.iter().enumerate() {
        if t.is_empty() || t.contains(',') || t.contains('/') {
            f.err(format!("tags[{}]", i + 1), "invalid tag: a tag is non-empty and contains no ',' or '/'");
        }
    }
    let created_at = f.int("created_at", 0, i64::MAX);
    let updated_at = f.int("updated_at", 0, i64::MAX);
    Meta { id, tags, created_at, updated_at }
}

/// Kong's `utf8_name`: letters, digits and `.-_~`, or any non-ASCII character.
fn check_name(f: &mut Fields<'_>, key: &str, name: &str) {
    let ok = !name.is_empty()
        && name.chars().all(|c| !c.is_ascii() || c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~'));
    if !ok {
        f.err(
            key,
            format!("invalid value '{name}': the only accepted ascii characters are alphanumerics or ., -, _, and ~"),
        );
    }
}

fn protocol_choices() -> String {
    "expected one of: grpc, grpcs, http, https, tcp, tls, tls_passthrough, udp".into()
}

fn is_one_protocol_family(set: ProtocolSet) -> bool {
    let families: [&[Protocol]; 4] = [
        &[Protocol::Http, Protocol::Https],
        &[Protocol::Tcp, Protocol::Tls, Protocol::Udp],
        &[Protocol::TlsPassthrough],
        &[Protocol::Grpc, Protocol::Grpcs],
    ];
    families.iter().any(|fam| set.iter().all(|p| fam.contains(&p)))
}

/// A reference field: `"name"`, `"<uuid>"`, `{id: …}` or `{name: …}`.
fn reference(f: &mut Fields<'_>, key: &str) -> Option<Ref> {
    let r = match f.get(key)? {
        Value::String(s) => Uuid::parse_str(s).map(Ref::Id).unwrap_or_else(|_| Ref::Name(s.clone())),
        Value::Object(o) => match (o.get("id").and_then(Value::as_str), o.get("name").and_then(Value::as_str)) {
            (Some(id), _) => match Uuid::parse_str(id) {
                Ok(id) => Ref::Id(id),
                Err(_) => {
                    f.err(format!("{key}.id"), "expected a valid UUID");
                    return None;
                }
            },
            (None, Some(name)) => Ref::Name(name.to_owned()),
            (None, None) => {
                f.err(key, "expected a reference: a name, an id, or a record with 'id' or 'name'");
                return None;
            }
        },
        _ => {
            f.err(key, "expected a reference: a name, an id, or a record with 'id' or 'name'");
            return None;
        }
    };
    Some(r)
}

/// `sources` or `destinations`: a list of `{ip, port}` records.
fn endpoints(f: &mut Fields<'_>, key: &str) -> Vec<Endpoint> {
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

/// An IP (`ip ==`) or a CIDR (`ip in`); IPv4 CIDRs are normalised to their
/// network address, as Kong does.
pub fn parse_ip_match(s: &str) -> Option<IpMatch> {
    if s.contains('/') {
        let net: IpNet = s.parse().ok()?;
        Some(IpMatch::Cidr(net.trunc()))
    } else {
        s.parse::<IpAddr>().ok().map(IpMatch::Exact)
    }
}

/// Parses a server name pattern. `allow_any` admits the lone `*` of SNI entities.
pub fn parse_sni(raw: &str, allow_any: bool) -> Result<SniPattern, String> {
    let s = raw.trim_end_matches('.').to_ascii_lowercase();
    if s == "*" {
        return if allow_any {
            Ok(SniPattern::Any)
        } else {
            Err(format!("invalid SNI '{raw}': a lone '*' is not allowed here"))
        };
    }
    if s.parse::<IpAddr>().is_ok() || s.starts_with('[') {
        return Err(format!("invalid SNI '{raw}': must not be an IP address"));
    }
    if s.contains(':') {
        return Err(format!("invalid SNI '{raw}': must not have a port"));
    }
    let stars = s.matches('*').count();
    let (pattern, body) = if stars == 0 {
        (SniPattern::Exact(s.clone()), s.as_str())
    } else if stars == 1 && s.starts_with("*.") {
        (SniPattern::Suffix(s[2..].to_owned()), &s[2..])
    } else if stars == 1 && s.ends_with(".*") {
        (SniPattern::Prefix(s[..s.len() - 2].to_owned()), &s[..s.len() - 2])
    } else {
        return Err(format!(
            "invalid SNI '{raw}': wildcard must be leftmost ('*.example.com') or rightmost ('example.*')"
        ));
    };
    if !is_dns_name(body) {
        return Err(format!("invalid SNI '{raw}': not a valid hostname"));
    }
    Ok(pattern)
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Kong's service/target host: a host name (leniently, as KIC generates names
/// like `tcproute..echo.0`) or an IP literal.
pub(crate) fn is_host(h: &str) -> bool {
    if h.parse::<IpAddr>().is_ok() {
        return true;
    }
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && h.len() <= 253
        && !h.starts_with('.')
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        ip.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((ip.to_owned(), port));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((s.to_owned(), None));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h.to_ascii_lowercase(), Some(p.parse().ok()?))),
        None => Some((s.to_ascii_lowercase(), None)),
    }
}

struct ParsedUrl {
    protocol: Protocol,
    host: String,
    port: u16,
    path: Option<String>,
}

fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("invalid url '{url}': missing scheme"))?;
    let protocol = Protocol::parse(&scheme.to_ascii_lowercase())
        .filter(|p| *p != Protocol::TlsPassthrough)
        .ok_or_else(|| format!("invalid url '{url}': unsupported scheme '{scheme}'"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    if authority.is_empty() {
        return Err("missing host in url".into());
    }
    let (host, port) = split_host_port(authority).ok_or_else(|| format!("invalid url '{url}': bad host or port"))?;
    if !is_host(&host) {
        return Err(format!("invalid url '{url}': bad host '{host}'"));
    }
    let default_port = match protocol {
        Protocol::Https | Protocol::Grpcs | Protocol::Tls => 443,
        _ => 80,
    };
    Ok(ParsedUrl { protocol, host, port: port.unwrap_or(default_port), path })
}

/// Kong's rules tying `hash_on`, `hash_fallback` and their inputs together.
fn hash_rules(f: &mut Fields<'_>, on: HashOn, fallback: HashOn) {
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
