//! Kong's declarative configuration (`_format_version` "3.0", "2.1", "1.1"),
//! YAML or JSON, turned into a validated [`Config`].
//!
//! Loading runs in three steps: flatten nested entities into per-type lists
//! (remembering each one's parent; `flatten.rs`), parse every entity on its
//! own (one file per entity: `service.rs`, `route.rs`, `certificate.rs` with
//! SNIs and CA certificates, `upstream.rs` with targets, `plugin.rs`,
//! `filter.rs` for filter chains), then
//! resolve references and check uniqueness (`resolve.rs`). The pure syntax
//! the entities share is in `syntax.rs`. Every problem found is reported,
//! each naming the entity (by path and name), the field, the reason, and
//! what kind of rule it broke ([`ErrorKind`]).
//!
//! The same entity parsers describe their fields ([`entity_schema`]), so the
//! Admin API's `/schemas/{entity}` and every default come from here.

mod certificate;
mod filter;
mod flatten;
mod plugin;
mod resolve;
mod route;
mod service;
mod syntax;
mod upstream;

use std::fmt;

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::entities::*;
use crate::fields::ENTITY;

pub use filter::{FILTER_PROTOCOLS, FilterSchemas};
pub use plugin::{BUNDLED_PLUGINS, ConfigCheck, HTTP_ONLY_PLUGINS, PluginNames, PluginSchemas};
pub(crate) use syntax::is_host;
pub use syntax::{parse_ip_match, parse_sni};

use flatten::Builder;

/// What kind of rule an error broke: Kong answers each differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A field's value, or a rule about the whole entity.
    Schema,
    /// The `id` is used by another entity of the same kind.
    PrimaryKey { id: Uuid },
    /// A unique field is taken (a name; a target within its upstream; a
    /// plugin within its scope): `value` is what is taken.
    Unique { value: String },
    /// A reference names no entity of that kind.
    ForeignKey { entity: EntityKind, reference: String },
}

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
    pub kind: ErrorKind,
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

pub(crate) const FORMAT_VERSIONS: [&str; 3] = ["1.1", "2.1", "3.0"];
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
pub(crate) const IGNORED_KEYS: [&str; 8] =
    ["consumers", "consumer_groups", "vaults", "keys", "key_sets", "partials", "workspaces", "licenses"];
pub(crate) const META_KEYS: [&str; 6] = ["_format_version", "_transform", "_comment", "_ignore", "_info", "_workspace"];

/// What loading depends on besides the document.
#[derive(Clone, Default)]
pub struct Options {
    pub plugins: PluginNames,
    pub schemas: Option<std::sync::Arc<dyn PluginSchemas>>,
    /// The proxy-wasm filters loaded; `None` when `wasm` is off.
    pub filters: Option<std::sync::Arc<dyn FilterSchemas>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("plugins", &self.plugins)
            .field("schemas", &self.schemas.is_some())
            .field("filters", &self.filters.is_some())
            .finish()
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
            kind: ErrorKind::Schema,
        }]));
    };
    b.top_level(top);
    b.finish()
}

/// Kong's `/schemas/{entity}`: every field the loader reads for `kind`, in
/// the order it reads them, with its type, whether it is required, its
/// default and its bounds — found by running the entity's own parser on an
/// empty record, so the schema can never disagree with validation.
pub fn entity_schema(kind: EntityKind, options: &Options) -> Value {
    let mut b = Builder { options: options.clone(), describing: true, ..Builder::default() };
    let empty = Value::Object(Map::new());
    let path = String::new();
    match kind {
        EntityKind::Services => b.service(&empty, path),
        EntityKind::Routes => b.route(&empty, path, None),
        EntityKind::Certificates => b.certificate(&empty, path),
        EntityKind::Snis => b.sni(&empty, path, None),
        EntityKind::CaCertificates => b.ca_certificate(&empty, path),
        EntityKind::Upstreams => b.upstream(&empty, path),
        EntityKind::Targets => b.target(&empty, path, None),
        EntityKind::Plugins => b.plugin(&empty, path, None, None),
        EntityKind::FilterChains => b.filter_chain(&empty, path, None, None),
    }
    let fields: Vec<Value> = b.described.into_iter().map(|(name, spec)| serde_json::json!({ name: spec })).collect();
    serde_json::json!({ "fields": fields })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field<'a>(schema: &'a Value, name: &str) -> Option<&'a Value> {
        schema["fields"].as_array()?.iter().find_map(|f| f.get(name))
    }

    #[test]
    fn entity_schemas_come_from_the_loader_with_its_defaults() {
        let options = Options::default();
        let services = entity_schema(EntityKind::Services, &options);
        let get = |n| field(&services, n).unwrap_or_else(|| panic!("{n} in {services}"));
        assert_eq!(get("retries")["default"], 5);
        assert_eq!(get("retries")["between"], serde_json::json!([0, 32767]));
        assert_eq!(get("connect_timeout")["default"], 60_000);
        assert_eq!(get("protocol")["default"], "http");
        assert_eq!(get("port")["default"], 80);
        assert_eq!(get("host")["required"], true);
        assert_eq!(get("enabled")["default"], true);
        assert_eq!(get("client_certificate")["reference"], "certificates");
        assert_eq!(get("id")["auto"], true);
        assert!(field(&services, "routes").is_none(), "nested children are not fields of the entity");

        let routes = entity_schema(EntityKind::Routes, &options);
        assert_eq!(field(&routes, "protocols").expect("protocols")["default"], serde_json::json!(["http", "https"]));
        assert_eq!(field(&routes, "service").expect("service")["type"], "foreign");
        let targets = entity_schema(EntityKind::Targets, &options);
        assert_eq!(field(&targets, "weight").expect("weight")["default"], 100);
        let upstreams = entity_schema(EntityKind::Upstreams, &options);
        assert_eq!(field(&upstreams, "slots").expect("slots")["default"], 10_000);
        assert_eq!(field(&upstreams, "algorithm").expect("algorithm")["default"], "round-robin");
        for kind in EntityKind::ALL {
            let schema = entity_schema(kind, &options);
            assert!(field(&schema, "id").is_some(), "{kind} has an id");
            assert!(field(&schema, "tags").is_some(), "{kind} has tags");
        }
    }
}
