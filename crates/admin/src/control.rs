//! The control plane's single writer.
//!
//! Every change — an Admin API write, `POST /config`, an import — goes
//! through [`Control::apply`]: under one lock it edits a copy of the whole
//! configuration (as Kong's flat declarative JSON), validates it with the same
//! loader the declarative file uses, compiles a new snapshot, writes the rows
//! that changed in one store transaction, and only then publishes the snapshot
//! with one atomic swap. A change that fails at any step leaves the stored
//! data and the running configuration as they were. Open sessions keep the
//! snapshot they started with.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde_json::{Map, Value, json};
use strait_model::{Config, EntityError, KeyPair, LoadError, Options, export, load_value_with};
use strait_proxy::{Plugins, Resumption, Snapshot, Upstreams};
use strait_store::{Row, Store, StoreError};

use crate::error::ApiError;

/// The eight entity lists, in the order the declarative document has them.
pub const KINDS: [&str; 8] =
    ["services", "routes", "certificates", "snis", "ca_certificates", "upstreams", "targets", "plugins"];

/// The configuration being served, with what the Admin API needs around it.
#[derive(Debug)]
pub struct Current {
    pub config: Config,
    /// `export::to_declarative(&config)`: Kong-shaped entities by kind.
    pub doc: Value,
    /// Insertion order of each stored entity, by (kind, id).
    pub seqs: HashMap<(String, String), i64>,
    pub version: i64,
    pub hash: String,
}

impl Current {
    fn new(config: Config, mut seqs: HashMap<(String, String), i64>, version: i64) -> Current {
        let mut doc = export::to_declarative(&config);
        // Entities without a stored position (database `off`) take the next
        // ones in document order; lists are kept in position order, which is
        // the order pagination walks and a restart loads.
        let mut next = seqs.values().max().copied().unwrap_or(0) + 1;
        for kind in KINDS {
            let Some(list) = doc.get_mut(kind).and_then(Value::as_array_mut) else { continue };
            for e in list.iter() {
                let id = e.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
                seqs.entry((kind.to_owned(), id)).or_insert_with(|| {
                    next += 1;
                    next - 1
                });
            }
            let key = |e: &Value| {
                let id = e.get("id").and_then(Value::as_str).unwrap_or_default();
                seqs.get(&(kind.to_owned(), id.to_owned())).copied().unwrap_or(0)
            };
            list.sort_by_key(key);
        }
        let hash = config_hash(&doc);
        Current { config, doc, seqs, version, hash }
    }

    /// Entities of `kind`, in order.
    pub fn list(&self, kind: &str) -> &[Value] {
        self.doc.get(kind).and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    pub fn seq(&self, kind: &str, id: &str) -> i64 {
        self.seqs.get(&(kind.to_owned(), id.to_owned())).copied().unwrap_or(0)
    }
}

/// Kong's `configuration_hash`: 32 hex digits over the canonical document.
/// Timestamps are left out: the same entities imported again hash the same.
pub fn config_hash(doc: &Value) -> String {
    let mut doc = doc.clone();
    for kind in KINDS {
        for e in doc.get_mut(kind).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(o) = e.as_object_mut() {
                o.remove("created_at");
                o.remove("updated_at");
            }
        }
    }
    // FNV-1a, 128 bits: stable across runs and builds, which is all a change
    // detector needs.
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in doc.to_string().bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    format!("{h:032x}")
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

type Publisher = Box<dyn Fn(Snapshot) + Send + Sync>;

/// The single writer of the configuration.
pub struct Control {
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// The last store access reached the database (always true for SQLite).
    db_reachable: AtomicBool,
    /// Where the last configuration seen is kept (shared store, `db_cache`).
    cache: OnceLock<PathBuf>,
    /// The version last written to the cache.
    cache_written: Arc<std::sync::Mutex<i64>>,
    /// Serving a cached configuration not yet checked against the store: the
    /// first sync reloads even at an equal version (the cache may come from
    /// another database).
    unverified: AtomicBool,
    /// The version served, for whoever waits on changes (the cluster heartbeat).
    served: tokio::sync::watch::Sender<i64>,
    current: ArcSwap<Current>,
    store: Option<Store>,
    default_cert: KeyPair,
    resumption: Resumption,
    options: Options,
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
    Compile(#[from] strait_proxy::CompileError),
    #[error("cannot import the declarative configuration: {0}")]
    Import(String),
    #[error("the configuration cache {path} cannot be used: {reason}")]
    Cache { path: String, reason: String },
}

/// What a successful change produced.
#[derive(Debug)]
pub struct Applied {
    pub current: Arc<Current>,
    /// The entity the change was about, as `(kind, id)`.
    pub target: Option<(String, String)>,
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
            None => Current::new(initial, HashMap::new(), 0),
            Some(store) => {
                let (rows, version) = store.load().await?;
                current_from_rows(rows, version, &options).map_err(ControlError::Stored)?
            }
        };
        let seed = if current.version == 0 { seed_doc } else { None };
        let control = Control::assemble(store, current, tls, options, upstreams, plugins);
        if let Some(doc) = seed {
            // Decided again under the writer lock, against the latest stored
            // configuration: another node may have seeded (or written) first.
            let mut seeded = false;
            control
                .apply(|d| {
                    if KINDS.iter().any(|k| d.get(*k).and_then(Value::as_array).is_some_and(|a| !a.is_empty())) {
                        return Err(ApiError::message(axum::http::StatusCode::CONFLICT, "already configured"));
                    }
                    seeded = true;
                    replace_all(d, doc)
                })
                .await
                .or_else(|e| if seeded { Err(e) } else { Ok(Applied { current: control.current(), target: None }) })
                .map_err(|e| ControlError::Import(e.body.to_string()))?;
            if seeded {
                tracing::info!("the empty store was seeded from declarative_config");
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
        cache: &std::path::Path,
        tls: ServerTls,
        options: Options,
        upstreams: Arc<Upstreams>,
        plugins: Arc<Plugins>,
    ) -> Result<(Arc<Control>, Snapshot), ControlError> {
        let current = read_cache(cache, &options)?;
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
            default_cert: tls.default_cert,
            resumption: tls.resumption,
            options,
            publish: OnceLock::new(),
            upstreams,
            plugins,
        })
    }

    fn compile(&self, config: &Config) -> Result<Snapshot, strait_proxy::CompileError> {
        Snapshot::compile(config.clone(), &self.default_cert, &self.resumption, &self.upstreams, &self.plugins)
    }

    /// Keeps the configuration in `path` after every change from now on
    /// (shared store with `db_cache`), and writes the current one now.
    pub fn set_cache(&self, path: PathBuf) {
        if self.cache.set(path).is_ok() {
            self.save_cache(&self.current());
        }
    }

    /// Writes the cache on a blocking thread (it ends in an fsync); writes
    /// finishing out of order never replace a newer version with an older.
    fn save_cache(&self, current: &Current) {
        let Some(path) = self.cache.get().cloned() else { return };
        let body = cache_body(current);
        let version = current.version;
        let written = self.cache_written.clone();
        let write = move || {
            let Ok(mut last) = written.lock() else { return };
            if *last >= version {
                return;
            }
            match write_cache(&path, &body) {
                Ok(()) => *last = version,
                Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot write the configuration cache"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(write)),
            Err(_) => write(),
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

    fn note_store_result<T>(&self, r: &Result<T, StoreError>) {
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
    fn adopt(&self, rows: Vec<Row>, version: i64) -> Result<Arc<Current>, ControlError> {
        let current = current_from_rows(rows, version, &self.options).map_err(ControlError::Stored)?;
        let snapshot = self.compile(&current.config)?;
        if let Some(publish) = self.publish.get() {
            publish(snapshot);
        }
        let current = Arc::new(current);
        self.current.store(current.clone());
        self.save_cache(&current);
        self.served.send_replace(version);
        tracing::info!(version, hash = %current.hash, "configuration updated from the database");
        Ok(current)
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

    /// Balancer and health state, for the health endpoints.
    pub fn plugins(&self) -> &Arc<Plugins> {
        &self.plugins
    }

    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    pub fn store(&self) -> Option<&Store> {
        self.store.as_ref()
    }

    /// Applies one change. `edit` gets a copy of the flat declarative
    /// document and returns the path of the entity it created or changed
    /// (`("routes", id)`), so errors can be reported against it.
    pub async fn apply<F>(self: &Arc<Self>, edit: F) -> Result<Applied, ApiError>
    where
        F: FnOnce(&mut Value) -> Result<Option<(String, String)>, ApiError>,
    {
        self.change(edit, false).await
    }

    /// Validates a change as [`Control::apply`] would, without applying it.
    pub async fn check<F>(self: &Arc<Self>, edit: F) -> Result<(), ApiError>
    where
        F: FnOnce(&mut Value) -> Result<Option<(String, String)>, ApiError>,
    {
        self.change(edit, true).await.map(drop)
    }

    async fn change<F>(self: &Arc<Self>, edit: F, dry_run: bool) -> Result<Applied, ApiError>
    where
        F: FnOnce(&mut Value) -> Result<Option<(String, String)>, ApiError>,
    {
        let guard = self.write_lock.clone().lock_owned().await;
        let mut old = self.current.load_full();
        // The store's change holds the cluster-wide writer lock from here to
        // its commit; if another node wrote since this one last synced, the
        // edit applies to the newer configuration, never over it.
        let mut pending = None;
        // A dry run (validation only) checks against the served
        // configuration and needs neither the database nor its lock.
        if let Some(store) = self.store.as_ref().filter(|_| !dry_run) {
            let begun = store.begin_change().await;
            self.note_store_result(&begun);
            let mut w = begun.map_err(|e| db_error(&e))?;
            let version = w.version().await;
            self.note_store_result(&version);
            if version.map_err(|e| db_error(&e))? != old.version {
                let (rows, version) = w.load().await.map_err(|e| db_error(&e))?;
                old = self.adopt(rows, version).map_err(|e| ApiError::database(e.to_string()))?;
            }
            pending = Some(w);
        }
        let mut doc = old.doc.clone();
        let target = edit(&mut doc)?;
        stamp(&mut doc, &old.doc);
        let target_path = target.as_ref().and_then(|(kind, id)| {
            doc.get(kind)?
                .as_array()?
                .iter()
                .rposition(|e| e.get("id").and_then(Value::as_str) == Some(id))
                .map(|i| format!("{kind}[{}]", i + 1))
        });
        let loaded = load_value_with(&doc, &self.options).map_err(|e| load_error(e, target_path.as_deref()))?;
        let snapshot = Snapshot::compile(
            loaded.config.clone(),
            &self.default_cert,
            &self.resumption,
            &self.upstreams,
            &self.plugins,
        )
        .map_err(compile_error)?;
        if dry_run {
            return Ok(Applied { current: old, target });
        }
        // From here on the change runs to its end even if the request is
        // dropped (client gone, shutdown): a commit is always followed by the
        // swap, and the lock is held until both are done.
        let this = self.clone();
        let tail = async move {
            let _guard = guard;
            this.commit(pending, old, loaded.config, snapshot, target).await
        };
        tokio::spawn(tail).await.map_err(|e| ApiError::database(format!("the write did not finish: {e}")))?
    }

    async fn commit(
        &self,
        pending: Option<strait_store::Change>,
        old: Arc<Current>,
        config: Config,
        snapshot: Snapshot,
        target: Option<(String, String)>,
    ) -> Result<Applied, ApiError> {
        let new_doc = export::to_declarative(&config);

        // Persist the rows that changed, with stable insertion order.
        let mut seqs = old.seqs.clone();
        let version = match pending {
            None => old.version + 1,
            Some(mut w) => {
                let (upserts, deletes) = diff(&old.doc, &new_doc);
                let mut rows: Vec<Row> = upserts
                    .into_iter()
                    .map(|(kind, id, doc)| {
                        let seq = seqs.get(&(kind.clone(), id.clone())).copied().unwrap_or(0);
                        Row { kind, id, seq, doc }
                    })
                    .collect();
                let written = match w.write(&mut rows, &deletes).await {
                    Ok(v) => w.commit().await.map(|()| v),
                    Err(e) => Err(e),
                };
                self.note_store_result(&written);
                let version = written.map_err(|e| db_error(&e))?;
                for row in rows {
                    seqs.insert((row.kind, row.id), row.seq);
                }
                for (k, id) in &deletes {
                    seqs.remove(&(k.clone(), id.clone()));
                }
                version
            }
        };
        if let Some(publish) = self.publish.get() {
            publish(snapshot);
        }
        let current = Arc::new(Current::new(config, seqs, version));
        self.current.store(current.clone());
        self.save_cache(&current);
        self.served.send_replace(version);
        Ok(Applied { current, target })
    }
}

/// Kong's database error for a store failure.
fn db_error(e: &StoreError) -> ApiError {
    if e.is_unreachable() {
        ApiError::database(format!("the database is unreachable: {e}"))
    } else {
        ApiError::database(e.to_string())
    }
}

/// The served configuration from stored rows.
fn current_from_rows(rows: Vec<Row>, version: i64, options: &Options) -> Result<Current, LoadError> {
    let mut doc = json!({ "_format_version": "3.0" });
    let mut seqs = HashMap::new();
    for row in rows {
        if let Some(list) = doc.as_object_mut().map(|o| o.entry(row.kind.clone()).or_insert_with(|| json!([]))) {
            if let Some(a) = list.as_array_mut() {
                a.push(row.doc);
            }
        }
        seqs.insert((row.kind, row.id), row.seq);
    }
    let config = load_value_with(&doc, options)?.config;
    Ok(Current::new(config, seqs, version))
}

/// Writes the configuration cache: the declarative document, its version
/// and insertion order. It holds private keys, so it is created 0600, and
/// it is replaced atomically so a crash never leaves half a file.
fn cache_body(current: &Current) -> String {
    let seqs: Vec<Value> = current.seqs.iter().map(|((k, id), seq)| json!([k, id, seq])).collect();
    json!({ "version": current.version, "hash": current.hash, "config": current.doc, "seqs": seqs }).to_string()
}

fn write_cache(path: &std::path::Path, body: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads what [`write_cache`] wrote, validated as any stored configuration.
fn read_cache(path: &std::path::Path, options: &Options) -> Result<Current, ControlError> {
    let bad = |reason: String| ControlError::Cache { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let version = v.get("version").and_then(Value::as_i64).ok_or_else(|| bad("no version".into()))?;
    let mut doc = v.get("config").cloned().ok_or_else(|| bad("no config".into()))?;
    if let Some(o) = doc.as_object_mut() {
        o.insert("_format_version".into(), json!("3.0"));
    }
    let mut seqs = HashMap::new();
    for e in v.get("seqs").and_then(Value::as_array).into_iter().flatten() {
        if let (Some(k), Some(id), Some(seq)) =
            (e.get(0).and_then(Value::as_str), e.get(1).and_then(Value::as_str), e.get(2).and_then(Value::as_i64))
        {
            seqs.insert((k.to_owned(), id.to_owned()), seq);
        }
    }
    let config = load_value_with(&doc, options).map_err(|e| bad(e.to_string()))?.config;
    Ok(Current::new(config, seqs, version))
}

/// Entities that arrive without timestamps (declarative imports) keep the
/// ones they had under the same id, or get them now.
fn stamp(doc: &mut Value, old: &Value) {
    let t = now();
    let mut before: HashMap<(&str, &str), &Map<String, Value>> = HashMap::new();
    for kind in KINDS {
        for e in old.get(kind).and_then(Value::as_array).into_iter().flatten() {
            if let (Some(id), Some(o)) = (e.get("id").and_then(Value::as_str), e.as_object()) {
                before.insert((kind, id), o);
            }
        }
    }
    for kind in KINDS {
        for e in doc.get_mut(kind).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(o) = e.as_object_mut() else { continue };
            let id = o.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
            for key in ["created_at", "updated_at"] {
                if o.get(key).is_none_or(Value::is_null) {
                    let kept = before.get(&(kind, id.as_str())).and_then(|b| b.get(key)).filter(|v| !v.is_null());
                    o.insert(key.to_owned(), kept.cloned().unwrap_or(json!(t)));
                }
            }
        }
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

/// Replaces the whole document (`POST /config`, imports).
pub fn replace_all(doc: &mut Value, new: Value) -> Result<Option<(String, String)>, ApiError> {
    *doc = new;
    Ok(None)
}

type Upsert = (String, String, Value);

/// Rows to write and rows to delete between two documents.
fn diff(old: &Value, new: &Value) -> (Vec<Upsert>, Vec<(String, String)>) {
    let index = |doc: &Value| -> HashMap<(String, String), Value> {
        let mut m = HashMap::new();
        for kind in KINDS {
            for e in doc.get(kind).and_then(Value::as_array).into_iter().flatten() {
                if let Some(id) = e.get("id").and_then(Value::as_str) {
                    m.insert((kind.to_owned(), id.to_owned()), e.clone());
                }
            }
        }
        m
    };
    let before = index(old);
    let mut upserts = Vec::new();
    // New entities in document order, so insertion order follows it.
    for kind in KINDS {
        for e in new.get(kind).and_then(Value::as_array).into_iter().flatten() {
            let Some(id) = e.get("id").and_then(Value::as_str) else { continue };
            if before.get(&(kind.to_owned(), id.to_owned())) != Some(e) {
                upserts.push((kind.to_owned(), id.to_owned(), e.clone()));
            }
        }
    }
    let after = index(new);
    let deletes = before.into_keys().filter(|k| !after.contains_key(k)).collect();
    (upserts, deletes)
}

/// Turns loader errors into one Kong error about the entity being written.
fn load_error(err: LoadError, target: Option<&str>) -> ApiError {
    let errors = match err {
        LoadError::Syntax(s) => return ApiError::bad_body(&s),
        LoadError::Invalid(errors) => errors,
    };
    // A name taken: Kong's 409, whichever of the two entities it was reported on.
    if target.is_some() {
        if let Some(e) = errors.iter().find(|e| e.message.starts_with("UNIQUE violation")) {
            let value = e.name.clone().unwrap_or_default();
            return ApiError::unique(e.message.clone(), &e.field, &value);
        }
    }
    let mine: Vec<&EntityError> = match target {
        Some(t) => errors.iter().filter(|e| e.path == t || e.path.starts_with(&format!("{t}."))).collect(),
        None => Vec::new(),
    };
    if mine.is_empty() {
        // Errors elsewhere (e.g. a whole-document import): report them all.
        let flat: Vec<Value> = errors
            .iter()
            .map(|e| json!({ "entity_type": e.entity, "entity_name": e.name, "path": e.path, "field": e.field, "message": e.message }))
            .collect();
        let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        return ApiError::invalid_declarative(format!("declarative config is invalid: {message}"), json!(flat));
    }
    for e in &mine {
        if e.field == "id" && e.message.starts_with("uniqueness violation") {
            let id = e.message.split_whitespace().nth(3).unwrap_or_default();
            return ApiError::primary_key_violation(id);
        }
        if e.message.starts_with("UNIQUE violation") {
            let value = e.name.clone().unwrap_or_default();
            return ApiError::unique(e.message.clone(), &e.field, &value);
        }
        if let Some(rest) = e.message.strip_prefix("could not find ") {
            // "could not find service 'x'"
            let (what, reference) = rest.split_once(" '").unwrap_or((rest, ""));
            let entity = match what {
                "service" => "services",
                "route" => "routes",
                "certificate" => "certificates",
                "CA certificate" => "ca_certificates",
                "upstream" => "upstreams",
                other => other,
            };
            return ApiError::foreign_key(&e.field, entity, reference.trim_end_matches('\''));
        }
    }
    let mut fields = Map::new();
    for e in mine {
        let field = if let Some(t) = target {
            // Errors on children created through the entity (a certificate's snis).
            match e.path.strip_prefix(&format!("{t}.")) {
                Some(child) => format!("{child}.{}", e.field),
                None => e.field.clone(),
            }
        } else {
            e.field.clone()
        };
        if field == "@entity" {
            let list = fields.entry("@entity").or_insert_with(|| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(json!(e.message));
            }
        } else {
            insert_nested(&mut fields, &field, json!(e.message));
        }
    }
    ApiError::schema(fields)
}

/// A configuration that validated but does not compile. A plugin's error
/// on one of its config fields becomes Kong's schema violation on that field.
fn compile_error(e: strait_proxy::CompileError) -> ApiError {
    if let strait_proxy::CompileError::Plugin { reason, .. } = &e {
        if let Some((field, msg)) = reason.split_once(": ").filter(|(f, _)| f.starts_with("config.")) {
            let mut fields = Map::new();
            insert_nested(&mut fields, field, json!(msg));
            return ApiError::schema(fields);
        }
    }
    ApiError::entity(&e.to_string())
}

/// `sources[2].ip` → `{"sources": [null, {"ip": msg}]}`, as Kong nests field errors.
fn insert_nested(fields: &mut Map<String, Value>, path: &str, msg: Value) {
    let mut parts = path.split('.').peekable();
    let mut cursor: &mut Map<String, Value> = fields;
    while let Some(part) = parts.next() {
        let last = parts.peek().is_none();
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        match index {
            None if last => {
                cursor.insert(name.to_owned(), msg);
                return;
            }
            None => {
                let next = cursor.entry(name.to_owned()).or_insert_with(|| json!({}));
                if !next.is_object() {
                    *next = json!({});
                }
                let Some(m) = next.as_object_mut() else { return };
                cursor = m;
            }
            Some(i) => {
                let list = cursor.entry(name.to_owned()).or_insert_with(|| json!([]));
                if !list.is_array() {
                    *list = json!([]);
                }
                let Some(a) = list.as_array_mut() else { return };
                let i = i.saturating_sub(1);
                if a.len() <= i {
                    a.resize(i + 1, Value::Null);
                }
                if last {
                    a[i] = msg;
                    return;
                }
                if !a[i].is_object() {
                    a[i] = json!({});
                }
                let Some(m) = a[i].as_object_mut() else { return };
                cursor = m;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_field_errors() {
        let mut f = Map::new();
        insert_nested(&mut f, "sources[2].ip", json!("bad"));
        insert_nested(&mut f, "port", json!("range"));
        assert_eq!(Value::Object(f), json!({"sources": [null, {"ip": "bad"}], "port": "range"}));
    }

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = json!({"services": [{"name": "a"}]});
        assert_eq!(config_hash(&a), config_hash(&a.clone()));
        assert_ne!(config_hash(&a), config_hash(&json!({"services": [{"name": "b"}]})));
        assert_eq!(config_hash(&a).len(), 32);
    }
}
