//! Wiring: settings → declarative configuration → snapshot, shared by
//! `start` (`gateway.rs`) and the one-shot commands (`check`, `config`,
//! `migrations`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use std::sync::Arc;

use strait_config::{Database, Settings};
use strait_control::{Control, ServerTls};
use strait_model::{Config, KeyPair, Loaded, Options, PluginNames};
use strait_plugin::Plugins;
use strait_proxy::Snapshot;
use strait_store::Store;
use strait_tls::Resumption;
use strait_upstream::Upstreams;

/// Everything `start` needs, validated; also what `check` validates.
pub(crate) struct Prepared {
    pub(crate) settings: Settings,
    pub(crate) loaded: Loaded,
    pub(crate) default_cert: KeyPair,
}

/// What a configuration may use: the plugins of this binary (the
/// built-ins) and, when `wasm` is on, the filters of `wasm_filters_path`.
pub(crate) struct Kit {
    pub(crate) plugins: Arc<Plugins>,
    /// The filters, for the loader; `None` when `wasm` is off.
    pub(crate) filters: Option<Arc<strait_wasm::WasmFilters>>,
}

/// Made once per command. `cache`: keep compiled filters under `prefix`
/// (`check` writes nothing).
pub(crate) fn kit(settings: &Settings, cache: bool) -> Result<Kit> {
    let registry = strait_plugins::registry();
    if !settings.wasm.enabled {
        return Ok(Kit { plugins: Plugins::new(registry), filters: None });
    }
    let metrics = Arc::new(strait_plugin::Metrics::default());
    // One instance of each configured filter per worker thread.
    let workers = settings
        .worker_threads
        .map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), |n| n.get());
    let names: Vec<&'static str> = registry.names().collect();
    let reserved = |n: &str| names.contains(&n) || strait_model::BUNDLED_PLUGINS.contains(&n);
    let prefix = cache.then_some(settings.prefix.as_path());
    let (filters, _) = strait_wasm::WasmFilters::load(&settings.wasm, prefix, workers, &metrics, &reserved)?;
    if filters.names().next().is_none() {
        tracing::warn!("wasm is on but no filter is enabled: no wasm filters are available");
    }
    let filters = Arc::new(filters);
    let runtime: Arc<dyn strait_plugin::Filters> = filters.clone();
    Ok(Kit { plugins: Plugins::with_filters(registry, metrics, Some(runtime)), filters: Some(filters) })
}

pub(crate) fn prepare(settings: Settings, kit: &Kit, generate_cert: bool) -> Result<Prepared> {
    let plugins = &kit.plugins;
    let registry = plugins.registry();
    for name in settings.plugins.iter().filter(|p| *p != "bundled") {
        if !plugins.has(name) {
            let custom: Vec<&str> = registry.names().filter(|n| !strait_model::BUNDLED_PLUGINS.contains(n)).collect();
            bail!(
                "plugins: '{name}' is not built into this binary; the custom plugins it has are: {}",
                custom.join(", ")
            );
        }
    }
    let loaded = match &settings.declarative_config {
        Some(path) => load_declarative("declarative_config", path, &options(&settings, kit))?,
        None => Loaded { config: Config::default(), warnings: Vec::new() },
    };
    let default_cert = match &settings.ssl_cert {
        Some((cert, key)) => crate::certs::load(cert, key)?,
        None if generate_cert => crate::certs::load_or_generate(&settings.prefix)?,
        // `check` must not write files: validate with a throwaway certificate.
        None => throwaway_cert()?,
    };
    Ok(Prepared { settings, loaded, default_cert })
}

fn throwaway_cert() -> Result<KeyPair> {
    let g = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    strait_model::pem::key_pair(&g.cert.pem(), &g.signing_key.serialize_pem(), "mismatch")
        .map_err(|errs| anyhow::anyhow!("generated certificate: {errs:?}"))
}

/// Reads and validates a declarative file; `what` names it in errors.
fn load_declarative(what: &str, path: &Path, options: &Options) -> Result<Loaded> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{what}: cannot read {}", path.display()))?;
    strait_model::load_str_with(&text, options).with_context(|| format!("{what} {}", path.display()))
}

/// The TLS server side every compiled configuration shares.
pub(crate) fn server_tls(settings: &Settings, default_cert: strait_model::KeyPair) -> ServerTls {
    ServerTls { default_cert, resumption: resumption(settings) }
}

/// Made once per process: its session cache is shared by every configuration.
fn resumption(settings: &Settings) -> Resumption {
    Resumption::new(settings.ssl_session_tickets, settings.ssl_session_cache)
}

/// Validation options from the settings (`plugins`), the plugins' schemas
/// and the filters'.
pub(crate) fn options(settings: &Settings, kit: &Kit) -> Options {
    Options {
        schemas: Some(kit.plugins.schemas()),
        filters: kit.filters.clone().map(|f| f as Arc<dyn strait_model::FilterSchemas>),
        plugins: PluginNames {
            bundled: settings.plugins.iter().any(|p| p == "bundled"),
            custom: settings.plugins.iter().filter(|p| *p != "bundled").cloned().collect(),
        },
    }
}

/// What opening the configured store gave.
pub(crate) enum Opened {
    /// `Some` store, migrated and reachable; `None` for `database = off`.
    Ready(Option<Store>),
    /// PostgreSQL could not be reached; the error says where and why.
    Unreachable(Store, anyhow::Error),
}

/// The store for `database`, migrated (or checked to be, with
/// `auto_migrate = off`).
pub(crate) async fn open_store(settings: &Settings) -> Result<Opened> {
    match settings.database {
        Database::Off => Ok(Opened::Ready(None)),
        Database::Sqlite => {
            let path = settings.prefix.join("strait.db");
            let store = Store::open_sqlite(&path).await.with_context(|| format!("database: {}", path.display()))?;
            if settings.auto_migrate {
                store.migrate_up().await.context("database migrations")?;
            } else {
                store.ensure_migrated().await.context("database")?;
            }
            Ok(Opened::Ready(Some(store)))
        }
        Database::Postgres => {
            let store = Store::open_postgres(&settings.pg);
            let ready =
                if settings.auto_migrate { store.migrate_up().await.map(drop) } else { store.ensure_migrated().await };
            match ready {
                Ok(()) => Ok(Opened::Ready(Some(store))),
                Err(e) if e.is_unreachable() => {
                    let why = pg_error(settings, e);
                    Ok(Opened::Unreachable(store, why))
                }
                Err(e) => Err(pg_error(settings, e)),
            }
        }
    }
}

/// The PostgreSQL store, reachable and migrated, for one-shot commands.
async fn open_store_now(settings: &Settings) -> Result<Option<Store>> {
    match open_store(settings).await? {
        Opened::Ready(store) => Ok(store),
        Opened::Unreachable(_, why) => Err(why),
    }
}

/// A PostgreSQL error at start, with the settings that fix it.
fn pg_error(settings: &Settings, e: strait_store::StoreError) -> anyhow::Error {
    let pg = &settings.pg;
    let at = format!("{}:{}", pg.host, pg.port);
    let code = match &e {
        strait_store::StoreError::Db(sqlx::Error::Database(d)) => d.code().map(|c| c.into_owned()),
        _ => None,
    };
    if let strait_store::StoreError::Db(sqlx::Error::Tls(_)) = &e {
        return anyhow::anyhow!(
            "TLS to PostgreSQL at {at} failed: check pg_ssl and pg_ssl_verify (verification trusts the system's \
             CA roots and needs the certificate to name pg_host) ({e})"
        );
    }
    match code.as_deref() {
        Some("28P01" | "28000") => {
            anyhow::anyhow!("PostgreSQL at {at} refused user '{}': check pg_user and pg_password ({e})", pg.user)
        }
        Some("3D000") => anyhow::anyhow!(
            "PostgreSQL at {at} has no database '{}': create it (CREATE DATABASE {} OWNER {}) or set pg_database",
            pg.database,
            pg.database,
            pg.user
        ),
        _ if e.is_unreachable() => anyhow::anyhow!(
            "cannot reach PostgreSQL at {at}: check pg_host and pg_port, and that the server runs ({e})"
        ),
        _ => anyhow::Error::new(e).context(format!("database: PostgreSQL at {at}, database '{}'", pg.database)),
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_owned()
}

/// The HTTPS configuration for `admin_listen ... ssl` and `admin_gui_listen
/// ... ssl`, if any entry asks for it.
pub(crate) fn admin_tls(
    settings: &Settings,
    default_cert: &strait_model::KeyPair,
) -> Result<Option<Arc<rustls::ServerConfig>>> {
    if !settings.admin_listen.iter().chain(&settings.admin_gui_listen).any(|l| l.ssl) {
        return Ok(None);
    }
    let pair = match &settings.admin_ssl_cert {
        Some((cert, key)) => crate::certs::load(cert, key).context("admin_ssl_cert")?,
        None => default_cert.clone(),
    };
    let config = rustls::ServerConfig::builder_with_provider(strait_tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())
        .context("admin_ssl_cert")?;
    Ok(Some(Arc::new(config)))
}

/// This node's id, kept under `prefix` so it survives restarts.
pub(crate) fn node_id(prefix: &Path) -> String {
    let path = prefix.join("node_id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && let Ok(id) = uuid::Uuid::parse_str(id.trim())
    {
        return id.to_string();
    }
    let id = uuid::Uuid::new_v4().to_string();
    if let Err(e) = std::fs::write(&path, &id) {
        tracing::warn!(error = %e, "cannot save the node id");
    }
    id
}

pub(crate) fn summary(c: &Config) -> String {
    format!(
        "{} services, {} routes, {} certificates, {} snis, {} ca_certificates, {} upstreams, {} targets, {} plugins",
        c.services.len(),
        c.routes.len(),
        c.certificates.len(),
        c.snis.len(),
        c.ca_certificates.len(),
        c.upstreams.len(),
        c.targets.len(),
        c.plugins.len()
    )
}

/// `strait check`.
pub fn check(conf: Option<&Path>) -> Result<()> {
    let settings = Settings::load(conf)?;
    let kit = kit(&settings, false)?;
    let plugins = kit.plugins.clone();
    let Prepared { settings, loaded, default_cert } = prepare(settings, &kit, false)?;
    for w in &loaded.warnings {
        println!("warning: {w}");
    }
    let counts = summary(&loaded.config);
    let upstreams = Arc::new(Upstreams::new(settings.dns.clone()));
    Snapshot::compile(Arc::new(loaded.config), &default_cert, &resumption(&settings), &upstreams, &plugins)?;
    println!("configuration OK: {} stream listener(s); {counts}", settings.stream_listen.len());
    Ok(())
}

/// `strait config parse FILE`.
pub fn parse(file: &Path) -> Result<()> {
    // `config parse` takes the settings file if there is one, for `plugins`.
    let opts = match Settings::load(default_conf_path().as_deref()) {
        Ok(s) => options(&s, &kit(&s, false)?),
        Err(_) => Options { schemas: Some(Plugins::new(strait_plugins::registry()).schemas()), ..Options::default() },
    };
    let loaded = load_declarative("declarative file", file, &opts)?;
    for w in &loaded.warnings {
        println!("warning: {w}");
    }
    println!("parse successful: {}", summary(&loaded.config));
    Ok(())
}

/// `strait config init [FILE]`.
pub fn init(file: &Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .with_context(|| format!("cannot create {} (it is never overwritten)", file.display()))?;
    f.write_all(crate::example::DECLARATIVE.as_bytes())?;
    println!("{} written", file.display());
    Ok(())
}

/// What `strait migrations` was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationsAction {
    Bootstrap,
    Up,
    Status,
}

/// `strait migrations bootstrap|up|status`. Safe to run from several nodes
/// at once: the store serializes them.
pub fn migrations(conf: Option<&Path>, action: MigrationsAction) -> Result<()> {
    let settings = Settings::load(conf)?;
    if settings.database == Database::Off {
        bail!("database is \"off\": there is nothing to migrate");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store = match settings.database {
            Database::Postgres => Store::open_postgres(&settings.pg),
            _ => {
                let path = settings.prefix.join("strait.db");
                Store::open_sqlite(&path).await.with_context(|| format!("database: {}", path.display()))?
            }
        };
        let status = store.migrations().await.map_err(|e| pg_or_plain(&settings, e))?;
        match action {
            MigrationsAction::Status => {
                for m in status {
                    println!("{:>3} {:<24} {}", m.version, m.name, if m.applied { "applied" } else { "pending" });
                }
            }
            MigrationsAction::Bootstrap if status.iter().any(|m| m.applied) => {
                println!("database already bootstrapped");
            }
            MigrationsAction::Bootstrap | MigrationsAction::Up => {
                let done = store.migrate_up().await.map_err(|e| pg_or_plain(&settings, e))?;
                if done.is_empty() {
                    println!("database is up to date");
                }
                for name in done {
                    println!("migrated: {name}");
                }
            }
        }
        store.close().await;
        anyhow::Ok(())
    })
}

fn pg_or_plain(settings: &Settings, e: strait_store::StoreError) -> anyhow::Error {
    if settings.database == Database::Postgres { pg_error(settings, e) } else { e.into() }
}

/// The control plane over the store, for commands that run no proxy.
async fn offline_control(settings: &Settings, kit: &Kit) -> Result<Arc<Control>> {
    let store = open_store_now(settings).await?;
    let (control, _) = Control::start(
        store,
        strait_model::Config::default(),
        server_tls(settings, throwaway_cert()?),
        options(settings, kit),
        Arc::new(Upstreams::new(settings.dns.clone())),
        kit.plugins.clone(),
    )
    .await?;
    Ok(control)
}

/// `strait config db_import FILE`: replaces the stored configuration.
pub fn db_import(conf: Option<&Path>, file: &Path) -> Result<()> {
    let settings = Settings::load(conf)?;
    let kit = kit(&settings, false)?;
    let loaded = load_declarative("declarative file", file, &options(&settings, &kit))?;
    if settings.database == Database::Off {
        bail!("database is \"off\": db_import needs a database");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let control = offline_control(&settings, &kit).await?;
        let doc = strait_model::export::to_declarative(&loaded.config);
        control
            .apply(|d| strait_control::replace_all::<std::convert::Infallible>(d, doc))
            .await
            .map_err(|e| anyhow::anyhow!("import refused: {e}"))?;
        println!("import successful: {}", summary(&control.current().config));
        anyhow::Ok(())
    })
}

/// `strait config db_export [FILE]`: writes the stored configuration.
pub fn db_export(conf: Option<&Path>, file: Option<&Path>) -> Result<()> {
    let settings = Settings::load(conf)?;
    if settings.database == Database::Off {
        bail!("database is \"off\": db_export needs a database");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let text = rt.block_on(async {
        let control = offline_control(&settings, &kit(&settings, false)?).await?;
        let text = serde_json::to_string_pretty(&control.current().doc)?;
        anyhow::Ok(text)
    })?;
    match file {
        Some(f) => {
            std::fs::write(f, text + "\n").with_context(|| format!("cannot write {}", f.display()))?;
            println!("exported to {}", f.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// `./strait.toml` when present (the default settings file).
fn default_conf_path() -> Option<std::path::PathBuf> {
    let local = Path::new("strait.toml");
    local.exists().then(|| local.to_owned())
}
