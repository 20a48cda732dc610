//! The control plane's single writer: [`Control`] holds the configuration
//! being served and is the only thing that changes it (`change.rs`), from
//! the Admin API, `POST /config`, an import, or another node's write seen
//! in a shared store ([`Control::sync`]). It starts from the store, from a
//! declarative file, or (cluster mode, database down) from its cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use serde_json::Value;
use strait_model::{Config, EntityKind, KeyPair, LoadError, Options, export};
use strait_plugin::Plugins;
use strait_proxy::{CompileError, Snapshot};
use strait_store::{Row, Store, StoreError};
use strait_tls::Resumption;
use strait_upstream::Upstreams;

use crate::change::{ChangeError, replace_all};
use crate::current::{self, Current};

type Publisher = Box<dyn Fn(Snapshot) + Send + Sync>;

/// The single writer of the configuration.
pub struct Control {
    pub(crate) write_lock: Arc<tokio::sync::Mutex<()>>,
    /// The last store access reached the database (always true for SQLite).
    db_reachable: AtomicBool,
    /// Where the last configuration seen is kept (shared store, `db_cache`).
    pub(crate) cache: OnceLock<PathBuf>,
    /// The version last written to the cache.
    pub(crate) cache_written: Arc<std::sync::Mutex<i64>>,
    /// Serving a cached configuration not yet checked against the store: the
    /// first sync reloads even at an equal version (the cache may come from
    /// another database).
    unverified: AtomicBool,
    /// The version served, for whoever waits on changes (the cluster heartbeat).
    pub(crate) served: tokio::sync::watch::Sender<i64>,
    pub(crate) current: ArcSwap<Current>,
    pub(crate) store: Option<Store>,
    /// Swapped by a reload that changes `ssl_cert`.
    default_cert: ArcSwap<KeyPair>,
    resumption: Resumption,
    pub(crate) options: Options,
    publish: OnceLock<Publisher>,
    upstreams: Arc<Upstreams>,
    plugins: Arc<Plugins>,
}

/// What every TLS server configuration compiled from the entities shares:
/// the certificate for clients whose SNI matches none, and how clients may
/// resume sessions.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub default_cert: KeyPair,
    pub resumption: Resumption,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("store", &self.store.is_some()).finish_non_exhaustive()
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] strait_store::StoreError),
    #[error("the stored configuration is invalid: {0}")]
    Stored(LoadError),
    #[error("the configuration cannot be compiled: {0}")]
    Compile(#[from] CompileError),
    #[error("cannot import the declarative configuration: {0}")]
    Import(String),
    #[error("the configuration cache {path} cannot be used: {reason}")]
    Cache { path: String, reason: String },
}

/// Why seeding an empty store did nothing.
#[derive(Debug)]
struct AlreadyConfigured;

impl std::fmt::Display for AlreadyConfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the store already holds a configuration")
    }
}

impl Control {
    /// Starts from the store (database mode) or from `initial` (database
    /// `off`). In database mode, an empty store that was never written is
    /// seeded with `initial` when one is given. Returns the first snapshot.
    pub async fn start(
        store: Option<Store>,
        initial: Config,
        tls: ServerTls,
        options: Options,
        upstreams: Arc<Upstreams>,
        plugins: Arc<Plugins>,
    ) -> Result<(Arc<Control>, Snapshot), ControlError> {
        let seed_doc = (store.is_some() && !is_empty(&initial)).then(|| export::to_declarative(&initial));
        let current = match &store {
            None => Current::new(Arc::new(initial), HashMap::new(), 0),
            Some(store) => {
                let (rows, version) = store.load().await?;
                current::from_rows(rows, version, &options).map_err(ControlError::Stored)?
            }
        };
        let seed = if current.version == 0 { seed_doc } else { None };
        let control = Control::assemble(store, current, tls, options, upstreams, plugins);
        if let Some(doc) = seed {
            // Decided again under the writer lock, against the latest stored
            // configuration: another node may have seeded (or written) first.
            let mut edited = false;
            let seeded = control
                .apply(|d| {
                    let list = |k: EntityKind| d.get(k.as_str()).and_then(Value::as_array);
                    if EntityKind::ALL.into_iter().any(|k| list(k).is_some_and(|a| !a.is_empty())) {
                        return Err(AlreadyConfigured);
                    }
                    edited = true;
                    replace_all(d, doc)
                })
                .await;
            match seeded {
                Ok(_) => tracing::info!("the empty store was seeded from declarative_config"),
                Err(ChangeError::Edit(AlreadyConfigured)) => {}
                // The seed itself was refused: the start fails.
                Err(e) if edited => return Err(ControlError::Import(e.to_string())),
                // The store could not even be asked (as before the edit):
                // serve what it holds; the first sync catches up.
                Err(e) => tracing::warn!(error = %e, "the store was not seeded from declarative_config"),
            }
        }
        let snapshot = control.compile(&control.current().config)?;
        Ok((control, snapshot))
    }

    /// Starts over a shared store that cannot be reached, from the
    /// configuration cached at `cache` by an earlier run. The node serves
    /// it and catches up once the database answers ([`Control::sync`]).
    pub fn start_cached(
        store: Store,
        cache: &Path,
        tls: ServerTls,
        options: Options,
        upstreams: Arc<Upstreams>,
        plugins: Arc<Plugins>,
    ) -> Result<(Arc<Control>, Snapshot), ControlError> {
        let current = crate::cache::read(cache, &options)?;
        tracing::warn!(
            version = current.version,
            hash = %current.hash,
            cache = %cache.display(),
            "the database is unreachable: serving the cached configuration until it returns"
        );
        let control = Control::assemble(Some(store), current, tls, options, upstreams, plugins);
        control.db_reachable.store(false, Ordering::Relaxed);
        control.unverified.store(true, Ordering::Relaxed);
        let snapshot = control.compile(&control.current().config)?;
        Ok((control, snapshot))
    }

    fn assemble(
        store: Option<Store>,
        current: Current,
        tls: ServerTls,
        options: Options,
        upstreams: Arc<Upstreams>,
        plugins: Arc<Plugins>,
    ) -> Arc<Control> {
        Arc::new(Control {
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            db_reachable: AtomicBool::new(true),
            cache: OnceLock::new(),
            cache_written: Arc::new(std::sync::Mutex::new(-1)),
            unverified: AtomicBool::new(false),
            served: tokio::sync::watch::Sender::new(current.version),
            current: ArcSwap::from_pointee(current),
            store,
            default_cert: ArcSwap::from_pointee(tls.default_cert),
            resumption: tls.resumption,
            options,
            publish: OnceLock::new(),
            upstreams,
            plugins,
        })
    }

    pub(crate) fn compile(&self, config: &Arc<Config>) -> Result<Snapshot, CompileError> {
        Snapshot::compile(config.clone(), &self.default_cert.load(), &self.resumption, &self.upstreams, &self.plugins)
    }

    /// Hands a snapshot to the proxy (once it has one).
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        if let Some(publish) = self.publish.get() {
            publish(snapshot);
        }
    }

    /// Wakes on every configuration swap, with the version now served.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<i64> {
        self.served.subscribe()
    }

    /// The last access to the database reached it.
    pub fn db_reachable(&self) -> bool {
        self.db_reachable.load(Ordering::Relaxed)
    }

    /// The database took too long to answer: count it as unreachable.
    pub fn note_stalled(&self) {
        self.note_reachable(false);
    }

    pub(crate) fn note_store_result<T>(&self, r: &Result<T, StoreError>) {
        self.note_reachable(match r {
            Ok(_) => true,
            Err(e) => !e.is_unreachable(),
        });
    }

    fn note_reachable(&self, reachable: bool) {
        let was = self.db_reachable.swap(reachable, Ordering::Relaxed);
        if was && !reachable {
            tracing::warn!("the database is unreachable: serving the last configuration; writes fail until it returns");
        } else if !was && reachable {
            tracing::info!("the database is reachable again");
        }
    }

    /// Catches up with the store: when its version differs from the one
    /// served, loads it, compiles it and swaps it in. Returns whether the
    /// configuration changed. A stored configuration this node cannot run
    /// (say, a plugin it does not enable) is refused and the old one kept.
    pub async fn sync(self: &Arc<Self>) -> Result<bool, ControlError> {
        let Some(store) = &self.store else { return Ok(false) };
        let _guard = self.write_lock.lock().await;
        let version = store.version().await;
        self.note_store_result(&version);
        if version? == self.current().version && !self.unverified.load(Ordering::Relaxed) {
            return Ok(false);
        }
        let loaded = store.load().await;
        self.note_store_result(&loaded);
        let (rows, version) = loaded?;
        self.adopt(rows, version)?;
        self.unverified.store(false, Ordering::Relaxed);
        Ok(true)
    }

    /// Serves configuration `version` made of `rows`, read from the store.
    pub(crate) fn adopt(&self, rows: Vec<Row>, version: i64) -> Result<Arc<Current>, ControlError> {
        let current = current::from_rows(rows, version, &self.options).map_err(ControlError::Stored)?;
        let snapshot = self.compile(&current.config)?;
        self.publish(snapshot);
        let current = Arc::new(current);
        self.current.store(current.clone());
        self.save_cache(&current);
        self.served.send_replace(version);
        tracing::info!(version, hash = %current.hash, "configuration updated from the database");
        Ok(current)
    }

    /// The certificate for clients whose SNI matches none.
    pub fn default_cert(&self) -> Arc<KeyPair> {
        self.default_cert.load_full()
    }

    /// Serves `cert` to clients whose SNI matches no certificate (a reload
    /// that changed `ssl_cert`): the served configuration is compiled with
    /// it and swapped in. A configuration that does not compile with it
    /// keeps the old certificate.
    pub async fn set_default_cert(&self, cert: KeyPair) -> Result<(), CompileError> {
        let _guard = self.write_lock.lock().await;
        let old = self.default_cert.swap(Arc::new(cert));
        match self.compile(&self.current().config) {
            Ok(snapshot) => {
                self.publish(snapshot);
                Ok(())
            }
            Err(e) => {
                self.default_cert.store(old);
                Err(e)
            }
        }
    }

    /// Where new snapshots go (the proxy). Set once, after the proxy starts.
    pub fn set_publisher(&self, f: impl Fn(Snapshot) + Send + Sync + 'static) {
        let _ = self.publish.set(Box::new(f));
    }

    pub fn current(&self) -> Arc<Current> {
        self.current.load_full()
    }

    /// `database` is not `off`: entities can be written one by one.
    pub fn writable(&self) -> bool {
        self.store.is_some()
    }

    /// What validation depends on (the enabled plugins).
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The plugins this process runs (their schemas, their metrics).
    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    /// Balancer and health state, for the health endpoints.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }
}

fn is_empty(c: &Config) -> bool {
    c.services.is_empty()
        && c.routes.is_empty()
        && c.certificates.is_empty()
        && c.snis.is_empty()
        && c.ca_certificates.is_empty()
        && c.upstreams.is_empty()
        && c.targets.is_empty()
        && c.plugins.is_empty()
}
