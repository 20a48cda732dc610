//! The settings file (`strait.toml`) and its `STRAIT_<KEY>` environment overrides.
//!
//! Keys are named after Kong's `kong.conf` keys. Precedence, lowest first:
//! defaults < file < environment. Every value is parsed into a typed field here,
//! so the rest of Strait never sees a raw string; every error names its key.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::dns::{DnsSettings, parse_order, parse_resolver};
use crate::listen::{AdminListen, ListenEntry, Unit, parse_admin_listen, parse_stream_listen};

/// Where the configuration comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    /// DB-less: the declarative file is the whole configuration.
    Off,
    /// The embedded store, a file under `prefix` (the default).
    Sqlite,
    /// PostgreSQL, shared by every node of a cluster (`pg_*` keys).
    Postgres,
}

impl Database {
    pub fn as_str(self) -> &'static str {
        match self {
            Database::Off => "off",
            Database::Sqlite => "sqlite",
            Database::Postgres => "postgres",
        }
    }
}

/// Kong's `pg_*` keys: where the shared PostgreSQL database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSettings {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub database: String,
    /// `pg_ssl`: encrypt the connection.
    pub ssl: bool,
    /// `pg_ssl_verify`: verify the server's certificate (needs `pg_ssl`).
    pub ssl_verify: bool,
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            host: "127.0.0.1".into(),
            port: 5432,
            user: "strait".into(),
            password: None,
            database: "strait".into(),
            ssl: false,
            ssl_verify: false,
        }
    }
}

/// Kong's log levels, mapped onto `tracing`'s five.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Where the per-session access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

/// Validated settings. Build them with [`Settings::load`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Working directory for logs and generated files.
    pub prefix: PathBuf,
    pub database: Database,
    /// Used when `database = "postgres"`.
    pub pg: PgSettings,
    /// `strait start` applies pending schema migrations itself (Strait
    /// setting; off for operators who run `strait migrations up` by hand).
    pub auto_migrate: bool,
    /// Kong's `db_update_frequency`: how often a node polls the database's
    /// configuration version, the fallback when change notifications are lost.
    pub db_update_frequency: Duration,
    /// Keep the last configuration seen under `prefix` and start from it
    /// when the database is unreachable (Strait setting).
    pub db_cache: bool,
    pub declarative_config: Option<PathBuf>,
    pub stream_listen: Vec<ListenEntry>,
    /// Where the Admin API listens; empty when `off`.
    pub admin_listen: Vec<AdminListen>,
    /// Kong's `status_listen`: `/status` and `/metrics`, read-only; off by default.
    pub status_listen: Vec<AdminListen>,
    /// Kong's `admin_gui_listen`: the web UI; empty when `off`.
    pub admin_gui_listen: Vec<AdminListen>,
    /// `admin_gui_listen` is its default, not the operator's choice: a busy
    /// port there is a warning, not a failed start.
    pub admin_gui_default: bool,
    /// Kong's `admin_gui_api_url`: where the UI's browser reaches the Admin
    /// API; unset: the UI's own origin, under `/api`.
    pub admin_gui_api_url: Option<GuiUrl>,
    /// Kong's `admin_gui_url`: the origins the UI is served from, which the
    /// Admin API allows cross-origin when `admin_gui_api_url` is set; empty:
    /// any host on one of `admin_gui_listen`'s ports.
    pub admin_gui_url: Vec<GuiUrl>,
    /// When set, Admin API requests must carry it in `Kong-Admin-Token`.
    pub admin_token: Option<String>,
    /// Kong's `plugins`: `bundled` and/or custom plugin names; empty when `off`.
    pub plugins: Vec<String>,
    /// Certificate for `admin_listen` entries with `ssl`; default: the default certificate.
    pub admin_ssl_cert: Option<(PathBuf, PathBuf)>,
    pub log_level: LogLevel,
    pub proxy_stream_access_log: AccessLog,
    /// Default certificate and key; generated under `prefix` when unset.
    pub ssl_cert: Option<(PathBuf, PathBuf)>,
    /// How long open sessions may finish after SIGTERM before they are closed.
    pub drain_timeout: Duration,
    /// Runtime worker threads; `None` means one per CPU.
    pub worker_threads: Option<NonZeroUsize>,
    /// Deadline for reading a whole ClientHello and for the TLS handshake.
    pub preread_timeout: Duration,
    /// On a plain listener where both plain and TLS routes could match, how long
    /// to wait for the client's first byte before treating the session as plain.
    pub tls_detect_timeout: Duration,
    /// Kong's `dns_*` keys.
    pub dns: DnsSettings,
    /// Peers allowed to send a PROXY protocol header (Kong's `trusted_ips`).
    pub trusted_ips: Vec<ipnet::IpNet>,
    /// Most UDP sessions one `udp` listener keeps at once (Strait extension).
    pub udp_max_sessions: usize,
    /// Kong's `ssl_session_tickets`: resumption by stateless tickets.
    pub ssl_session_tickets: bool,
    /// Kong's `ssl_session_cache_size`, in sessions (nginx keeps about 4,000
    /// per megabyte); 0 keeps none.
    pub ssl_session_cache: usize,
    /// Most bytes data-phase plugins (native or Wasm) may hold per direction
    /// of a session (Strait extension); past it the session closes.
    pub stream_max_pending: usize,
    /// Kong's `wasm`, `wasm_filters_path`, `wasm_filters`, and Strait's
    /// sandbox bounds.
    pub wasm: WasmSettings,
}

/// Proxy-wasm filters: whether they run, where they come from, the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmSettings {
    /// Kong's `wasm` (default off): no filter loads and filter chains are
    /// refused while it is off.
    pub enabled: bool,
    /// Kong's `wasm_filters_path`: every top-level `*.wasm` in it is a filter
    /// named by its file stem.
    pub filters_path: Option<PathBuf>,
    /// Kong's `wasm_filters`: `bundled`, `user` (those in `filters_path`),
    /// and names; empty when `off`.
    pub filters: Vec<String>,
    /// Strait's `wasm_call_timeout`: the time one guest call may take
    /// (wall-clock, enforced by epoch interruption).
    pub call_timeout: Duration,
    /// Strait's `wasm_memory_limit`: the most linear memory an instance may grow to.
    pub memory_limit: usize,
    /// Kong's `nginx_wasm_shm_kv`: the most bytes (keys and values) the
    /// filters' shared data holds.
    pub shm_kv: usize,
}

impl Default for WasmSettings {
    fn default() -> WasmSettings {
        WasmSettings {
            enabled: false,
            filters_path: None,
            filters: vec!["bundled".to_owned(), "user".to_owned()],
            call_timeout: Duration::from_millis(100),
            memory_limit: 64 * 1024 * 1024,
            shm_kv: 12 * 1024 * 1024,
        }
    }
}

/// One refused setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    pub key: String,
    /// `file` or `STRAIT_<KEY>`.
    pub source: String,
    pub reason: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (from {}): {}", self.key, self.source, self.reason)
    }
}

/// Everything wrong with a settings file, reported together.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read settings file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("settings file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("invalid settings:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<SettingError>),
}

/// Every key Strait reads, in the order `config init` documents them.
pub const KEYS: &[&str] = &[
    "prefix",
    "database",
    "pg_host",
    "pg_port",
    "pg_user",
    "pg_password",
    "pg_database",
    "pg_ssl",
    "pg_ssl_verify",
    "auto_migrate",
    "db_update_frequency",
    "db_cache",
    "declarative_config",
    "stream_listen",
    "admin_listen",
    "admin_token",
    "admin_gui_listen",
    "admin_gui_api_url",
    "admin_gui_url",
    "plugins",
    "admin_ssl_cert",
    "admin_ssl_cert_key",
    "status_listen",
    "log_level",
    "proxy_stream_access_log",
    "ssl_cert",
    "ssl_cert_key",
    "drain_timeout",
    "worker_threads",
    "preread_timeout",
    "tls_detect_timeout",
    "dns_resolver",
    "dns_hostsfile",
    "dns_order",
    "dns_valid_ttl",
    "dns_stale_ttl",
    "dns_not_found_ttl",
    "dns_error_ttl",
    "trusted_ips",
    "udp_max_sessions",
    "ssl_session_tickets",
    "ssl_session_cache_size",
    "stream_max_pending",
    "wasm",
    "wasm_filters_path",
    "wasm_filters",
    "wasm_call_timeout",
    "wasm_memory_limit",
    "nginx_wasm_shm_kv",
];

/// A value before parsing: from the TOML file or from the environment.
enum Raw<'a> {
    File(&'a toml::Value),
    Env(&'a str),
}

impl Raw<'_> {
    /// A string value; TOML numbers are accepted where a string is expected,
    /// so `drain_timeout = 30` and `STRAIT_DRAIN_TIMEOUT=30` mean the same.
    fn text(&self) -> Result<String, String> {
        match self {
            Raw::Env(s) => Ok(s.trim().to_owned()),
            Raw::File(toml::Value::String(s)) => Ok(s.trim().to_owned()),
            Raw::File(toml::Value::Integer(i)) => Ok(i.to_string()),
            Raw::File(toml::Value::Float(f)) => Ok(f.to_string()),
            Raw::File(toml::Value::Boolean(b)) => Ok(if *b { "on" } else { "off" }.to_owned()),
            Raw::File(other) => Err(format!("expected a string, found {}", other.type_str())),
        }
    }

    /// A list: a TOML array of strings, or Kong's comma-separated string.
    fn list(&self) -> Result<Vec<String>, String> {
        match self {
            Raw::File(toml::Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| format!("expected strings, found {}", v.type_str()))
                })
                .collect(),
            _ => Ok(self.text()?.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()),
        }
    }

    /// Relative paths are taken from the settings file's folder when they come
    /// from the file, from the working directory when they come from the environment.
    fn path(&self, base: Option<&Path>) -> Result<PathBuf, String> {
        let text = self.text()?;
        if text.is_empty() {
            return Err("expected a path, found an empty string".into());
        }
        let p = PathBuf::from(text);
        Ok(match (self, base) {
            (Raw::File(_), Some(base)) if p.is_relative() => base.join(p),
            _ => p,
        })
    }
}

impl Settings {
    /// Defaults, then `file` (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let env: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("STRAIT_")).collect();
        Settings::load_with_env(file, &env)
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Settings, SettingsError> {
        let (table, base) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| SettingsError::Syntax { path: path.to_owned(), message: e.to_string() })?;
                let base =
                    path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_owned() });
                (table, base)
            }
            None => (toml::Table::new(), None),
        };
        Settings::from_sources(&table, base.as_deref(), env)
    }

    fn from_sources(
        table: &toml::Table,
        base: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Settings, SettingsError> {
        let mut errors = Vec::new();
        for key in table.keys() {
            if !KEYS.contains(&key.as_str()) {
                errors.push(SettingError { key: key.clone(), source: "file".into(), reason: "unknown setting".into() });
            }
        }

        let mut s = Settings::defaults();
        let mut cert: Option<PathBuf> = None;
        let mut cert_key: Option<PathBuf> = None;
        let mut admin_cert: Option<PathBuf> = None;
        let mut admin_key: Option<PathBuf> = None;
        let mut access_log_raw = None;

        for &key in KEYS {
            let env_name = format!("STRAIT_{}", key.to_ascii_uppercase());
            let (raw, source) = match (env.get(&env_name), table.get(key)) {
                (Some(v), _) => (Raw::Env(v), env_name),
                (None, Some(v)) => (Raw::File(v), "file".to_owned()),
                (None, None) => continue,
            };
            let result: Result<(), String> = (|| {
                match key {
                    "prefix" => s.prefix = raw.path(base)?,
                    "database" => {
                        s.database = match raw.text()?.as_str() {
                            "off" => Database::Off,
                            "sqlite" => Database::Sqlite,
                            "postgres" => Database::Postgres,
                            other => return Err(format!("expected one of: off, sqlite, postgres; found '{other}'")),
                        }
                    }
                    "pg_host" => s.pg.host = non_empty(raw.text()?)?,
                    "pg_port" => {
                        let v = raw.text()?;
                        s.pg.port = v
                            .parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| format!("expected a port from 1 to 65535, found '{v}'"))?;
                    }
                    "pg_user" => s.pg.user = non_empty(raw.text()?)?,
                    "pg_password" => {
                        let v = raw.text()?;
                        s.pg.password = (!v.is_empty()).then_some(v);
                    }
                    "pg_database" => s.pg.database = non_empty(raw.text()?)?,
                    "pg_ssl" => s.pg.ssl = parse_flag(&raw.text()?)?,
                    "pg_ssl_verify" => s.pg.ssl_verify = parse_flag(&raw.text()?)?,
                    "auto_migrate" => s.auto_migrate = parse_flag(&raw.text()?)?,
                    "db_update_frequency" => {
                        s.db_update_frequency = nonzero(parse_duration_str(&raw.text()?, Unit::Seconds)?)?
                    }
                    "db_cache" => s.db_cache = parse_flag(&raw.text()?)?,
                    "declarative_config" => s.declarative_config = Some(raw.path(base)?),
                    "stream_listen" => {
                        s.stream_listen = parse_stream_listen(&raw.text()?).map_err(|e| e.to_string())?
                    }
                    "admin_listen" => s.admin_listen = parse_admin_listen(&raw.text()?)?,
                    "admin_gui_listen" => {
                        s.admin_gui_listen = parse_admin_listen(&raw.text()?)?;
                        s.admin_gui_default = false;
                    }
                    "admin_gui_api_url" => {
                        let v = raw.text()?;
                        s.admin_gui_api_url = if v.is_empty() { None } else { Some(GuiUrl::parse(&v)?) };
                    }
                    "admin_gui_url" => {
                        s.admin_gui_url = raw.list()?.iter().map(|v| GuiUrl::parse(v)).collect::<Result<_, _>>()?
                    }
                    "plugins" => {
                        let v = raw.list()?;
                        s.plugins = if v.len() == 1 && v[0].eq_ignore_ascii_case("off") { Vec::new() } else { v };
                        if let Some(bad) = s
                            .plugins
                            .iter()
                            .find(|p| !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
                        {
                            return Err(format!(
                                "'{bad}' is not a plugin name (expected \"bundled\", names, or \"off\")"
                            ));
                        }
                    }
                    "admin_token" => {
                        let v = raw.text()?;
                        s.admin_token = if v.is_empty() { None } else { Some(v) };
                    }
                    "status_listen" => s.status_listen = parse_admin_listen(&raw.text()?)?,
                    "log_level" => s.log_level = parse_log_level(&raw.text()?)?,
                    "proxy_stream_access_log" => access_log_raw = Some(raw.text()?),
                    "ssl_cert" => cert = Some(raw.path(base)?),
                    "ssl_cert_key" => cert_key = Some(raw.path(base)?),
                    "admin_ssl_cert" => admin_cert = Some(raw.path(base)?),
                    "admin_ssl_cert_key" => admin_key = Some(raw.path(base)?),
                    "drain_timeout" => s.drain_timeout = parse_duration_str(&raw.text()?, Unit::Seconds)?,
                    "worker_threads" => {
                        let v = raw.text()?;
                        s.worker_threads =
                            if v == "auto" {
                                None
                            } else {
                                Some(v.parse::<NonZeroUsize>().ok().filter(|n| n.get() <= 1024).ok_or_else(|| {
                                    format!("expected \"auto\" or a number from 1 to 1024, found '{v}'")
                                })?)
                            }
                    }
                    "preread_timeout" => s.preread_timeout = nonzero(parse_duration_str(&raw.text()?, Unit::Millis)?)?,
                    "tls_detect_timeout" => {
                        s.tls_detect_timeout = nonzero(parse_duration_str(&raw.text()?, Unit::Millis)?)?
                    }
                    "dns_resolver" => s.dns.resolver = parse_resolver(&raw.list()?)?,
                    "dns_hostsfile" => s.dns.hostsfile = raw.path(base)?,
                    "dns_order" => s.dns.order = parse_order(&raw.list()?)?,
                    "dns_valid_ttl" => {
                        let d = parse_duration_str(&raw.text()?, Unit::Seconds)?;
                        s.dns.valid_ttl = (!d.is_zero()).then_some(d);
                    }
                    "dns_stale_ttl" => s.dns.stale_ttl = parse_duration_str(&raw.text()?, Unit::Seconds)?,
                    "dns_not_found_ttl" => s.dns.not_found_ttl = parse_duration_str(&raw.text()?, Unit::Seconds)?,
                    "dns_error_ttl" => s.dns.error_ttl = parse_duration_str(&raw.text()?, Unit::Seconds)?,
                    "trusted_ips" => s.trusted_ips = parse_trusted_ips(&raw.list()?)?,
                    "udp_max_sessions" => {
                        let v = raw.text()?;
                        s.udp_max_sessions = v
                            .parse::<usize>()
                            .ok()
                            .filter(|n| (1..=10_000_000).contains(n))
                            .ok_or_else(|| format!("expected a number from 1 to 10000000, found '{v}'"))?;
                    }
                    "ssl_session_tickets" => s.ssl_session_tickets = parse_flag(&raw.text()?)?,
                    "ssl_session_cache_size" => s.ssl_session_cache = parse_session_cache_size(&raw.text()?)?,
                    "stream_max_pending" => s.stream_max_pending = parse_size(&raw.text()?, 1, GIB)?,
                    "wasm" => s.wasm.enabled = parse_flag(&raw.text()?)?,
                    "wasm_filters_path" => s.wasm.filters_path = Some(raw.path(base)?),
                    "wasm_filters" => s.wasm.filters = parse_wasm_filters(raw.list()?)?,
                    "wasm_call_timeout" => {
                        s.wasm.call_timeout = nonzero(parse_duration_str(&raw.text()?, Unit::Millis)?)?
                    }
                    "wasm_memory_limit" => s.wasm.memory_limit = parse_size(&raw.text()?, 64 * 1024, 4 * GIB)?,
                    "nginx_wasm_shm_kv" => s.wasm.shm_kv = parse_size(&raw.text()?, 1024, GIB)?,
                    _ => {}
                }
                Ok(())
            })();
            if let Err(reason) = result {
                errors.push(SettingError { key: key.to_owned(), source, reason });
            }
        }

        // The access log's relative path is under the prefix, as Kong's `logs/access.log`.
        if let Some(v) = access_log_raw {
            match parse_access_log(&v, &s.prefix) {
                Ok(a) => s.proxy_stream_access_log = a,
                Err(reason) => errors.push(SettingError {
                    key: "proxy_stream_access_log".into(),
                    source: "file or environment".into(),
                    reason,
                }),
            }
        } else {
            s.proxy_stream_access_log = AccessLog::File(s.prefix.join("logs/access.log"));
        }

        match (cert, cert_key) {
            (Some(c), Some(k)) => s.ssl_cert = Some((c, k)),
            (None, None) => {}
            (Some(_), None) => errors.push(SettingError {
                key: "ssl_cert_key".into(),
                source: "file or environment".into(),
                reason: "must be set when ssl_cert is set".into(),
            }),
            (None, Some(_)) => errors.push(SettingError {
                key: "ssl_cert".into(),
                source: "file or environment".into(),
                reason: "must be set when ssl_cert_key is set".into(),
            }),
        }

        match (admin_cert, admin_key) {
            (Some(c), Some(k)) => s.admin_ssl_cert = Some((c, k)),
            (None, None) => {}
            _ => errors.push(SettingError {
                key: "admin_ssl_cert".into(),
                source: "file or environment".into(),
                reason: "admin_ssl_cert and admin_ssl_cert_key must be set together".into(),
            }),
        }

        // The UI is a client of the Admin API: by default it follows it.
        if s.admin_listen.is_empty() && s.admin_gui_api_url.is_none() {
            if s.admin_gui_default {
                s.admin_gui_listen.clear();
            } else if !s.admin_gui_listen.is_empty() {
                errors.push(SettingError {
                    key: "admin_gui_listen".into(),
                    source: "file or environment".into(),
                    reason: "the web UI needs the Admin API, but admin_listen is off: turn admin_listen on, set \
                             admin_gui_api_url, or set admin_gui_listen = \"off\""
                        .into(),
                });
            }
        }

        if s.pg.ssl_verify && !s.pg.ssl {
            errors.push(SettingError {
                key: "pg_ssl_verify".into(),
                source: "file or environment".into(),
                reason: "needs pg_ssl = on (there is no certificate to verify on a plain connection)".into(),
            });
        }

        if s.stream_listen.iter().any(|e| e.proxy_protocol) && s.trusted_ips.is_empty() {
            errors.push(SettingError {
                key: "trusted_ips".into(),
                source: "file or environment".into(),
                reason: "a stream_listen entry has proxy_protocol but no peer is trusted to send it: list the \
                         load balancers' addresses (e.g. \"10.0.0.0/8\"), or \"0.0.0.0/0,::/0\" to trust every peer"
                    .into(),
            });
        }

        if errors.is_empty() { Ok(s) } else { Err(SettingsError::Invalid(errors)) }
    }

    fn defaults() -> Settings {
        Settings {
            prefix: PathBuf::from("/usr/local/strait"),
            database: Database::Sqlite,
            pg: PgSettings::default(),
            auto_migrate: true,
            db_update_frequency: Duration::from_secs(1),
            db_cache: true,
            declarative_config: None,
            stream_listen: Vec::new(),
            admin_listen: parse_admin_listen("127.0.0.1:8001").unwrap_or_default(),
            status_listen: Vec::new(),
            admin_gui_listen: parse_admin_listen("127.0.0.1:8002").unwrap_or_default(),
            admin_gui_default: true,
            admin_gui_api_url: None,
            admin_gui_url: Vec::new(),
            admin_token: None,
            plugins: vec!["bundled".to_owned()],
            admin_ssl_cert: None,
            log_level: LogLevel::Info,
            proxy_stream_access_log: AccessLog::Off,
            ssl_cert: None,
            drain_timeout: Duration::from_secs(30),
            worker_threads: None,
            preread_timeout: Duration::from_secs(10),
            tls_detect_timeout: Duration::from_secs(1),
            dns: DnsSettings::default(),
            trusted_ips: Vec::new(),
            udp_max_sessions: 10_000,
            ssl_session_tickets: true,
            ssl_session_cache: 10 * SESSIONS_PER_MB,
            stream_max_pending: 1024 * 1024,
            wasm: WasmSettings::default(),
        }
    }
}

/// Kong's `trusted_ips`: IPs and CIDRs; `unix:` (trust UNIX sockets) is
/// accepted and has nothing to apply to.
fn parse_trusted_ips(items: &[String]) -> Result<Vec<ipnet::IpNet>, String> {
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty() && *s != "unix:") {
        let net = match item.parse::<ipnet::IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => match item.parse::<std::net::IpAddr>() {
                Ok(ip) => ipnet::IpNet::from(ip),
                Err(_) => return Err(format!("'{item}' is not an IP address or CIDR")),
            },
        };
        out.push(net);
    }
    Ok(out)
}

/// An `http` or `https` URL for the web UI's settings, kept with its
/// origin (what a Content-Security-Policy and CORS compare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuiUrl {
    /// As given, without a trailing `/`.
    pub url: String,
    /// `scheme://host[:port]`.
    pub origin: String,
}

impl GuiUrl {
    /// Accepts `http(s)://host[:port][/path]`; the characters allowed are
    /// those that cannot break out of an HTTP header or a CSP source.
    pub fn parse(v: &str) -> Result<GuiUrl, String> {
        let bad =
            |why: &str| format!("'{v}' is not a URL for the web UI: {why} (expected http(s)://host[:port][/path])");
        let rest = v
            .strip_prefix("http://")
            .or_else(|| v.strip_prefix("https://"))
            .ok_or_else(|| bad("the scheme must be http or https"))?;
        if let Some(c) = v.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~:/[]%@!$&()+=".contains(*c))) {
            return Err(bad(&format!("'{c}' is not allowed")));
        }
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("it carries a user"));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (ip, after) = v6.split_once(']').ok_or_else(|| bad("an IPv6 address needs its closing ']'"))?;
                if ip.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(bad("the address in brackets is not IPv6"));
                }
                (&authority[..ip.len() + 2], after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            },
        };
        if host.is_empty() || host.contains([':', '[', ']']) && !host.starts_with('[') {
            return Err(bad("it has no host"));
        }
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| bad("the port is not 1 to 65535"))?),
            None => None,
        };
        let scheme = &v[..v.len() - rest.len()];
        // The origin as a browser sends it: lowercase, no default port.
        let default = if scheme == "https://" { 443 } else { 80 };
        let origin = match port {
            Some(p) if p != default => format!("{scheme}{host}:{p}"),
            _ => format!("{scheme}{host}"),
        }
        .to_ascii_lowercase();
        Ok(GuiUrl { url: v.trim_end_matches('/').to_owned(), origin })
    }
}

fn non_empty(v: String) -> Result<String, String> {
    if v.is_empty() { Err("must not be empty".into()) } else { Ok(v) }
}

/// TLS sessions nginx keeps per megabyte of `ssl_session_cache`.
const SESSIONS_PER_MB: usize = 4000;

/// Kong's `ssl_session_cache_size`: nginx's size syntax (`10m`, `512k`, bytes),
/// turned into a number of sessions as nginx sizes its cache; `0` or `off`
/// (Strait extensions) keep none.
fn parse_session_cache_size(v: &str) -> Result<usize, String> {
    let t = v.trim().to_ascii_lowercase();
    if t == "off" || t == "0" {
        return Ok(0);
    }
    let bytes = parse_size(&t, 1, GIB)
        .map_err(|_| format!("expected a size such as 10m or 512k (at most 1024m), or off, found '{v}'"))?;
    // Sessions of about 256 bytes, as nginx counts them; at least one.
    Ok(((bytes as u64 * SESSIONS_PER_MB as u64) / (1024 * 1024)).max(1) as usize)
}

const GIB: usize = 1024 * 1024 * 1024;

/// nginx's sizes: bytes, or `k`/`m`/`g` (binary units), from `min` to `max` bytes.
fn parse_size(v: &str, min: usize, max: usize) -> Result<usize, String> {
    let t = v.trim().to_ascii_lowercase();
    let (num, unit) = match t.as_bytes().last() {
        Some(b'k') => (&t[..t.len() - 1], 1024),
        Some(b'm') => (&t[..t.len() - 1], 1024 * 1024),
        Some(b'g') => (&t[..t.len() - 1], GIB),
        _ => (t.as_str(), 1),
    };
    let human = |n: usize| match n {
        n if n % GIB == 0 => format!("{}g", n / GIB),
        n if n % (1024 * 1024) == 0 => format!("{}m", n / (1024 * 1024)),
        n if n % 1024 == 0 => format!("{}k", n / 1024),
        n => n.to_string(),
    };
    num.parse::<usize>().ok().and_then(|n| n.checked_mul(unit)).filter(|b| (min..=max).contains(b)).ok_or_else(|| {
        format!("expected a size such as 512k or 10m, from {} to {}; found '{v}'", human(min), human(max))
    })
}

/// Kong's `wasm_filters`: `bundled`, `user`, filter names, or `off`.
fn parse_wasm_filters(v: Vec<String>) -> Result<Vec<String>, String> {
    if v.len() == 1 && v[0].eq_ignore_ascii_case("off") {
        return Ok(Vec::new());
    }
    if let Some(bad) = v.iter().find(|f| !f.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))) {
        return Err(format!("'{bad}' is not a filter name (expected \"bundled\", \"user\", names, or \"off\")"));
    }
    Ok(v)
}

/// Kong's booleans: `on`/`off` (TOML `true`/`false` arrive as those).
fn parse_flag(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("expected on or off, found '{v}'")),
    }
}

fn nonzero(d: Duration) -> Result<Duration, String> {
    if d.is_zero() { Err("must be greater than zero".into()) } else { Ok(d) }
}

fn parse_log_level(v: &str) -> Result<LogLevel, String> {
    Ok(match v.to_ascii_lowercase().as_str() {
        "debug" => LogLevel::Debug,
        "info" | "notice" => LogLevel::Info,
        "warn" => LogLevel::Warn,
        "error" | "crit" | "alert" | "emerg" => LogLevel::Error,
        _ => {
            return Err(format!("expected one of: debug, info, notice, warn, error, crit, alert, emerg; found '{v}'"));
        }
    })
}

fn parse_access_log(v: &str, prefix: &Path) -> Result<AccessLog, String> {
    let mut words = v.split_whitespace();
    let target = words.next().ok_or("expected off, stdout or a path")?;
    match words.next() {
        None | Some("basic") => {}
        Some(other) => return Err(format!("unknown log format '{other}' (only 'basic' is known)")),
    }
    if words.next().is_some() {
        return Err("expected '<path|stdout|off> [basic]'".into());
    }
    Ok(match target {
        "off" => AccessLog::Off,
        "stdout" | "/dev/stdout" => AccessLog::Stdout,
        path => {
            let p = PathBuf::from(path);
            AccessLog::File(if p.is_relative() { prefix.join(p) } else { p })
        }
    })
}

/// Parses `500ms`, `30s`, `2m`, `1h`, or a bare number in `bare` units.
pub fn parse_duration_str(v: &str, bare: Unit) -> Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("'{v}' is not a duration (examples: 500ms, 30s, 2m)"))?;
    let secs = match (unit, bare) {
        ("", Unit::Seconds) | ("s", _) => n,
        ("", Unit::Millis) | ("ms", _) => n / 1000.0,
        ("m", _) => n * 60.0,
        ("h", _) => n * 3600.0,
        _ => return Err(format!("'{v}' has an unknown unit (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("'{v}' is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let table: toml::Table = toml::from_str(toml).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_sources(&table, Some(Path::new("/etc/strait")), &env)
    }

    #[test]
    fn defaults_are_kong_like() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.database, Database::Sqlite);
        assert_eq!(s.admin_listen.len(), 1);
        assert_eq!(s.admin_listen[0].port, 8001);
        assert!(s.stream_listen.is_empty());
        assert_eq!(s.proxy_stream_access_log, AccessLog::File(PathBuf::from("/usr/local/strait/logs/access.log")));
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_web_ui_follows_the_admin_api() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.admin_gui_listen[0].addr_label(), "127.0.0.1:8002");
        assert!(s.admin_gui_default);
        let s = load(r#"admin_listen = "off""#, &[]).unwrap();
        assert!(s.admin_gui_listen.is_empty(), "the default UI is off with the Admin API");
        let Err(SettingsError::Invalid(errors)) =
            load("admin_listen = \"off\"\nadmin_gui_listen = \"127.0.0.1:9002\"", &[])
        else {
            panic!("a UI without an Admin API was accepted");
        };
        assert_eq!(errors[0].key, "admin_gui_listen");
        let s = load(r#"admin_gui_listen = "0.0.0.0:9002 ssl""#, &[]).unwrap();
        assert!(!s.admin_gui_default && s.admin_gui_listen[0].ssl);
        let s = load("", &[("STRAIT_ADMIN_GUI_LISTEN", "off")]).unwrap();
        assert!(s.admin_gui_listen.is_empty());
    }

    #[test]
    fn web_ui_urls_keep_their_origin() {
        let u = GuiUrl::parse("https://admin.example.com:8444/kong/").unwrap();
        assert_eq!(
            (u.url.as_str(), u.origin.as_str()),
            ("https://admin.example.com:8444/kong", "https://admin.example.com:8444")
        );
        assert_eq!(GuiUrl::parse("http://[::1]:8001").unwrap().origin, "http://[::1]:8001");
        assert_eq!(GuiUrl::parse("https://UI.Example:443/").unwrap().origin, "https://ui.example");
        assert_eq!(GuiUrl::parse("http://ui.example:80").unwrap().origin, "http://ui.example");
        for bad in [
            "ftp://x",
            "http://",
            "http://a b",
            "http://x;script-src *",
            "http://u@x",
            "https://x'",
            "http://*",
            "http://:8001",
            "http://x:abc",
            "http://x:99999",
            "http://[::1",
            "http://[nope]:1",
        ] {
            assert!(GuiUrl::parse(bad).is_err(), "{bad} was accepted");
        }
        let Err(SettingsError::Invalid(errors)) = load(r#"admin_gui_api_url = "localhost:8001""#, &[]) else {
            panic!("a URL without a scheme was accepted");
        };
        assert!(errors[0].reason.contains("http or https"), "{}", errors[0].reason);
    }

    #[test]
    fn env_overrides_file() {
        let s = load(
            r#"stream_listen = "127.0.0.1:9000"
               prefix = "run""#,
            &[("STRAIT_STREAM_LISTEN", "127.0.0.1:9000, 127.0.0.1:9443 ssl")],
        )
        .unwrap();
        assert_eq!(s.stream_listen.len(), 2);
        assert!(s.stream_listen[1].ssl);
        assert_eq!(s.prefix, PathBuf::from("/etc/strait/run"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let err = load(
            r#"stream_listn = "x"
               drain_timeout = "soon"
               database = "mysql"
               admin_listen = "8001"
               worker_threads = 0
               ssl_cert = "a.pem""#,
            &[("STRAIT_LOG_LEVEL", "loud")],
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "stream_listn (from file): unknown setting",
            "drain_timeout (from file)",
            "database (from file)",
            "admin_listen (from file)",
            "worker_threads (from file)",
            "log_level (from STRAIT_LOG_LEVEL)",
            "ssl_cert_key",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in {err}");
        }
    }

    #[test]
    fn tls_session_settings_follow_kong() {
        let s = load("", &[]).unwrap();
        assert!(s.ssl_session_tickets, "Kong's default: on");
        assert_eq!(s.ssl_session_cache, 40_000, "Kong's default 10m, as nginx counts sessions");
        let s = load(r#"ssl_session_tickets = "off""#, &[("STRAIT_SSL_SESSION_CACHE_SIZE", "512k")]).unwrap();
        assert!(!s.ssl_session_tickets);
        assert_eq!(s.ssl_session_cache, 2_000);
        let s = load("ssl_session_tickets = false\nssl_session_cache_size = \"off\"", &[]).unwrap();
        assert_eq!((s.ssl_session_tickets, s.ssl_session_cache), (false, 0));
        let err = load(r#"ssl_session_cache_size = "lots""#, &[("STRAIT_SSL_SESSION_TICKETS", "maybe")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssl_session_cache_size (from file): expected a size such as 10m"), "{err}");
        assert!(err.contains("ssl_session_tickets (from STRAIT_SSL_SESSION_TICKETS): expected on or off"), "{err}");
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration_str("250ms", Unit::Seconds).unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration_str("2m", Unit::Millis).unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration_str("5", Unit::Seconds).unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration_str("5", Unit::Millis).unwrap(), Duration::from_millis(5));
        assert!(parse_duration_str("5d", Unit::Millis).is_err());
        assert!(parse_duration_str("", Unit::Millis).is_err());
        assert!(parse_duration_str("1e999", Unit::Millis).is_err());
    }

    #[test]
    fn access_log_forms() {
        let s = load(r#"proxy_stream_access_log = "off""#, &[]).unwrap();
        assert_eq!(s.proxy_stream_access_log, AccessLog::Off);
        let s = load(r#"proxy_stream_access_log = "stdout basic""#, &[]).unwrap();
        assert_eq!(s.proxy_stream_access_log, AccessLog::Stdout);
        assert!(load(r#"proxy_stream_access_log = "x.log json""#, &[]).is_err());
    }

    #[test]
    fn dns_keys() {
        let s = load(
            r#"dns_resolver = ["127.0.0.1:5353"]
dns_order = "A,SRV"
dns_valid_ttl = 2
dns_hostsfile = "hosts""#,
            &[("STRAIT_DNS_ERROR_TTL", "250ms")],
        )
        .unwrap();
        assert_eq!(s.dns.resolver, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(s.dns.order, vec![crate::DnsType::A, crate::DnsType::Srv]);
        assert_eq!(s.dns.valid_ttl, Some(Duration::from_secs(2)));
        assert_eq!(s.dns.error_ttl, Duration::from_millis(250));
        assert_eq!(s.dns.hostsfile, Path::new("/etc/strait/hosts"));
        let err = load(r#"dns_resolver = "resolver.internal""#, &[]).unwrap_err().to_string();
        assert!(err.contains("dns_resolver (from file): 'resolver.internal' is not an IP address"), "{err}");
    }

    #[test]
    fn postgres_keys() {
        let s = load(
            r#"database = "postgres"
pg_host = "db.internal"
pg_port = 6432
pg_user = "kong"
pg_password = "s3cret"
pg_ssl = true
pg_ssl_verify = "on"
auto_migrate = false
db_update_frequency = 0.5
db_cache = "off""#,
            &[("STRAIT_PG_DATABASE", "gateway")],
        )
        .unwrap();
        assert_eq!(s.database, Database::Postgres);
        let want = PgSettings {
            host: "db.internal".into(),
            port: 6432,
            user: "kong".into(),
            password: Some("s3cret".into()),
            database: "gateway".into(),
            ssl: true,
            ssl_verify: true,
        };
        assert_eq!(s.pg, want);
        assert!(!s.auto_migrate && !s.db_cache);
        assert_eq!(s.db_update_frequency, Duration::from_millis(500));

        let defaults = load("", &[]).unwrap();
        assert_eq!((defaults.pg, defaults.auto_migrate, defaults.db_cache), (PgSettings::default(), true, true));

        let err = load("pg_port = 70000\npg_ssl_verify = true\ndb_update_frequency = 0", &[]).unwrap_err().to_string();
        assert!(err.contains("pg_port (from file): expected a port from 1 to 65535, found '70000'"), "{err}");
        assert!(err.contains("pg_ssl_verify") && err.contains("needs pg_ssl = on"), "{err}");
        assert!(err.contains("db_update_frequency (from file): must be greater than zero"), "{err}");
        let err = load("", &[("STRAIT_PG_SSL", "maybe")]).unwrap_err().to_string();
        assert!(err.contains("pg_ssl (from STRAIT_PG_SSL): expected on or off, found 'maybe'"), "{err}");
    }

    #[test]
    fn trusted_ips_and_proxy_protocol() {
        let s = load(
            r#"stream_listen = "127.0.0.1:9000 proxy_protocol"
trusted_ips = ["10.0.0.0/8", "192.0.2.7", "unix:"]"#,
            &[],
        )
        .unwrap();
        assert_eq!(s.trusted_ips.len(), 2);
        assert!(s.stream_listen[0].proxy_protocol);
        let s = load("", &[("STRAIT_TRUSTED_IPS", "0.0.0.0/0,::/0")]).unwrap();
        assert_eq!(s.trusted_ips.len(), 2);
        let err = load(r#"stream_listen = "127.0.0.1:9000 proxy_protocol""#, &[]).unwrap_err().to_string();
        assert!(err.contains("trusted_ips") && err.contains("proxy_protocol"), "{err}");
        let err = load(r#"trusted_ips = "10.0.0.0/33""#, &[]).unwrap_err().to_string();
        assert!(err.contains("trusted_ips (from file): '10.0.0.0/33' is not an IP address or CIDR"), "{err}");
    }
}
