//! Strait's settings: the TOML settings file, `STRAIT_<KEY>` environment
//! overrides and the `stream_listen` listener syntax, parsed into typed values.
//!
//! Nothing here binds sockets or reads the declarative configuration; it only
//! turns user input into [`Settings`] or errors that name the offending key.

pub mod dns;
pub mod listen;
pub mod settings;

pub use dns::{DnsSettings, DnsType};
pub use listen::{
    AdminListen, Keepalive, ListenEntry, ListenError, ListenHost, parse_admin_listen, parse_stream_listen,
};
pub use settings::{AccessLog, Database, GuiUrl, LogLevel, PgSettings, Settings, SettingsError, WasmSettings};
