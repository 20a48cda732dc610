//! Strait's configuration model: Kong's entities (services, routes,
//! certificates, SNIs, CA certificates, upstreams, targets, plugins, filter
//! chains) as typed
//! values, and the declarative loader that produces them.
//!
//! No IO and no networking here: text in, a validated [`Config`] or a list of
//! errors out. The data path and the Admin API share this one validation.

pub mod declarative;
pub mod entities;
pub mod export;
mod fields;
pub mod health;
pub mod healthchecks;
pub mod pem;

pub use declarative::{
    BUNDLED_PLUGINS, ConfigCheck, EntityError, ErrorKind, FILTER_PROTOCOLS, FilterSchemas, HTTP_ONLY_PLUGINS,
    LoadError, Loaded, Options, PluginNames, PluginSchemas, entity_schema, load_str, load_str_with, load_value,
    load_value_with, parse_sni,
};
pub use entities::*;
