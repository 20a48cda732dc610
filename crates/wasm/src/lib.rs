//! Proxy-wasm network filters for Strait, on wasmtime: Kong's filter
//! model (files in `wasm_filters_path`, chosen by `wasm_filters`, each with
//! an optional `<name>.meta.json` whose `config_schema` checks its
//! configuration) and Envoy's runtime semantics, at layer 4.
//!
//! [`WasmFilters`] is loaded once per process when `wasm` is on: every
//! module is compiled once (or loaded from the precompiled cache under
//! `prefix`) and checked — its ABI, its exports, its imports. It is the
//! loader's [`FilterSchemas`] (names, schemas) and the kit's [`Filters`]:
//! each filter of a chain becomes a plugin [`Instance`] with a data phase,
//! one instance of the module per worker, under the sandbox's bounds.
//!
//! The pieces: `module.rs` (checks), `cache.rs`, `host.rs` (the ABI's host
//! functions), `wasi.rs`, `props.rs` (properties), `shared.rs` (shared
//! data and queues), `metrics.rs`, `vm.rs` (one instance and its calls),
//! `filter.rs` (a configured filter: instances, sessions, failures).

mod abi;
mod cache;
mod filter;
mod host;
mod metrics;
mod module;
mod props;
mod schema;
mod shared;
mod vm;
mod wasi;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::Value;
use strait_config::WasmSettings;
use strait_model::FilterSchemas;
use strait_plugin::{Filters, Instance};

pub use abi::AbiVersion;
pub use cache::Origin;
pub use metrics::Metrics;

use filter::{FilterInstance, FilterModule, Sandbox};
use schema::ConfigSchema;
use shared::Shared;

/// Why the filters could not be loaded at all (Strait does not start).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("wasm_filters_path '{0}' is not a valid directory")]
    NotADirectory(PathBuf),
    #[error("cannot read wasm_filters_path '{path}': {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// Kong's wording, one line per filter.
    #[error("Failed to load metadata for one or more filters:\n{}", .0.join("\n"))]
    Metadata(Vec<String>),
    #[error("cannot start the Wasm engine: {0}")]
    Engine(String),
    #[error("filter name '{name}' is also a plugin's: rename {path}")]
    Duplicate { name: String, path: PathBuf },
}

/// A filter found in `wasm_filters_path`.
struct Filter {
    path: PathBuf,
    schema: ConfigSchema,
    /// Its module, or why it was refused (the configuration that uses it is
    /// refused with this reason).
    module: Result<Arc<FilterModule>, String>,
}

/// What one filter loaded as, for the log and the tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub name: String,
    pub path: PathBuf,
    /// The ABI and where the module came from, or why it was refused.
    pub outcome: Result<(AbiVersion, Origin), String>,
}

/// Key of a configured filter: name, configuration, occurrence in a route.
type InstanceKey = (String, String, usize);

/// The process's Wasm filters.
pub struct WasmFilters {
    filters: BTreeMap<String, Filter>,
    shared: Arc<Shared>,
    workers: usize,
    /// Configured filters alive, shared by equal configurations (across
    /// configuration changes too).
    instances: Mutex<HashMap<InstanceKey, Weak<FilterInstance>>>,
    /// Stops the epoch ticker when the filters go.
    ticking: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmFilters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmFilters").field("filters", &self.filters.keys().collect::<Vec<_>>()).finish_non_exhaustive()
    }
}

impl Drop for WasmFilters {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
    }
}

/// The top-level `*.wasm` files of `dir` (no recursion; case-insensitive
/// suffix), by name (the file's stem).
fn discover(dir: &Path) -> Result<BTreeMap<String, PathBuf>, LoadError> {
    if !dir.is_dir() {
        return Err(LoadError::NotADirectory(dir.to_owned()));
    }
    let read = std::fs::read_dir(dir).map_err(|source| LoadError::Read { path: dir.to_owned(), source })?;
    let mut out = BTreeMap::new();
    for entry in read.flatten() {
        let path = entry.path();
        let is_wasm = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("wasm"));
        if !path.is_file() || !is_wasm {
            tracing::debug!(file = %path.display(), "ignoring a file in wasm_filters_path: not a .wasm module");
            continue;
        }
        if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
            out.insert(stem.to_owned(), path);
        }
    }
    Ok(out)
}

/// A filter's `<name>.meta.json`: its `config_schema`, if any.
fn metadata(name: &str, wasm: &Path) -> Result<ConfigSchema, String> {
    let meta = wasm.with_extension("meta.json");
    let text = match std::fs::read_to_string(&meta) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ConfigSchema::Default),
        Err(e) if meta.is_dir() => return Err(format!("* {name} ({}) invalid type: {e}", meta.display())),
        Err(e) => return Err(format!("* {name} ({}) I/O error: {e}", meta.display())),
    };
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| format!("* {name} ({}) JSON decode error: {e}", meta.display()))?;
    let invalid = |why: String| format!("* {name} ({}) file contains invalid metadata: {why}", meta.display());
    let Value::Object(o) = doc else { return Err(invalid("expected a JSON object".to_owned())) };
    if let Some(k) = o.keys().find(|k| !["config_schema", "metrics"].contains(&k.as_str())) {
        return Err(invalid(format!("unknown field '{k}'")));
    }
    match o.get("config_schema") {
        None | Some(Value::Null) => Ok(ConfigSchema::Default),
        Some(s) => ConfigSchema::compile(name, s.clone()).map_err(|e| invalid(format!("config_schema: {e}"))),
    }
}

/// A filter's name lives as long as the process (the kit's plugin names are
/// `'static`); there are as many as files in one directory, once.
fn intern(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

impl WasmFilters {
    /// Finds, compiles and checks the filters `settings` enable. `prefix`
    /// holds the compiled cache (none: compile every module, write
    /// nothing); `workers` is how many instances each
    /// configured filter gets; `metrics` is where the filters' metrics go
    /// (registered as an exporter for `/metrics`). `reserved` are names
    /// taken by plugins.
    pub fn load(
        settings: &WasmSettings,
        prefix: Option<&Path>,
        workers: usize,
        metrics: &strait_plugin::Metrics,
        reserved: &dyn Fn(&str) -> bool,
    ) -> Result<(WasmFilters, Vec<Report>), LoadError> {
        // Kong: `bundled` (Strait bundles no filter), `user` (every file of
        // the path), or names; `off` already became an empty list.
        let found = match &settings.filters_path {
            Some(dir) => discover(dir)?,
            None => BTreeMap::new(),
        };
        let all = settings.filters.iter().any(|f| f == "user");
        let chosen: Vec<(String, PathBuf)> =
            found.into_iter().filter(|(name, _)| all || settings.filters.iter().any(|f| f == name)).collect();
        let mut problems = Vec::new();
        let mut schemas = Vec::new();
        for (name, path) in &chosen {
            if reserved(name) {
                return Err(LoadError::Duplicate { name: name.clone(), path: path.clone() });
            }
            match metadata(name, path) {
                Ok(s) => schemas.push(s),
                Err(p) => problems.push(p),
            }
        }
        if !problems.is_empty() {
            return Err(LoadError::Metadata(problems));
        }
        let engine = module::engine().map_err(LoadError::Engine)?;
        let imports = host::Imports::new(&engine).map_err(|e| LoadError::Engine(e.to_string()))?;
        // The deadline in ticks of a tenth of it (at least a millisecond):
        // a call is stopped between 0.9 and 1.0 times wasm_call_timeout.
        let tick = (settings.call_timeout / 10).max(Duration::from_millis(1));
        let ticks = (settings.call_timeout.as_nanos() / tick.as_nanos()).max(1) as u64;
        let sandbox = Sandbox { call_timeout: settings.call_timeout, ticks, memory_limit: settings.memory_limit };
        let cache_dir = prefix.map(|p| p.join(".wasm_cache"));
        let mut filters = BTreeMap::new();
        let mut reports = Vec::new();
        for ((name, path), schema) in chosen.into_iter().zip(schemas) {
            let module = std::fs::read(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|bytes| cache::compile(&engine, &bytes, cache_dir.as_deref()))
                .and_then(|(m, origin)| {
                    let checked = module::check(&m, &imports, settings.memory_limit)?;
                    let pre = imports.linker.instantiate_pre(&m).map_err(|e| e.to_string())?;
                    let module = FilterModule {
                        name: intern(&name),
                        abi: checked.abi,
                        pre,
                        memory_export: checked.memory_export,
                        sandbox: sandbox.clone(),
                        engine: engine.clone(),
                    };
                    Ok((Arc::new(module), origin))
                });
            match &module {
                Ok((m, origin)) => {
                    tracing::info!(filter = %name, path = %path.display(), abi = m.abi.as_str(), origin = ?origin, "Wasm filter loaded");
                }
                Err(reason) => {
                    tracing::error!(filter = %name, path = %path.display(), %reason, "Wasm filter refused: configurations that use it are refused");
                }
            }
            reports.push(Report {
                name: name.clone(),
                path: path.clone(),
                outcome: module.as_ref().map(|(m, o)| (m.abi, *o)).map_err(Clone::clone),
            });
            filters.insert(name, Filter { path, schema, module: module.map(|(m, _)| m) });
        }
        let ticking = Arc::new(AtomicBool::new(true));
        if filters.values().any(|f| f.module.is_ok()) {
            // A thread, not a task: a guest looping on every worker must
            // still be stopped.
            let (weak, on) = (engine.weak(), ticking.clone());
            std::thread::Builder::new()
                .name("strait-wasm-epoch".into())
                .spawn(move || {
                    while on.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        match weak.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => return,
                        }
                    }
                })
                .map_err(|e| LoadError::Engine(e.to_string()))?;
        }
        let shared = Arc::new(Shared::new(settings.shm_kv, metrics.exporter::<Metrics>()));
        let instances = Mutex::new(HashMap::new());
        Ok((WasmFilters { filters, shared, workers: workers.max(1), instances, ticking }, reports))
    }

    /// The loaded filters' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.filters.keys().map(String::as_str)
    }

    /// Where a filter's module is.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.filters.get(name).map(|f| f.path.as_path())
    }
}

impl FilterSchemas for WasmFilters {
    fn has(&self, name: &str) -> bool {
        self.filters.contains_key(name)
    }

    fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    fn check(&self, name: &str, config: Option<&Value>) -> Result<(), String> {
        let Some(f) = self.filters.get(name) else { return Err("no such filter".to_owned()) };
        f.schema.check(config)
    }

    fn usable(&self, name: &str) -> Result<(), String> {
        match self.filters.get(name).map(|f| &f.module) {
            Some(Err(reason)) => {
                Err(format!("the filter's module ({}) was refused: {reason}", self.filters[name].path.display()))
            }
            _ => Ok(()),
        }
    }

    fn names(&self) -> Vec<String> {
        self.filters.keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Value> {
        self.filters.get(name).map(|f| f.schema.doc())
    }
}

/// What a filter receives as `PLUGIN_CONFIGURATION`: a string as its bytes,
/// anything else as its JSON (as Kong passes it), nothing as empty.
fn config_bytes(config: Option<&Value>) -> Vec<u8> {
    match config {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s.as_bytes().to_vec(),
        Some(v) => v.to_string().into_bytes(),
    }
}

impl Filters for WasmFilters {
    fn build(
        &self,
        name: &str,
        config: Option<&Value>,
        occurrence: usize,
    ) -> Result<(&'static str, Arc<dyn Instance>), String> {
        let f = self.filters.get(name).ok_or_else(|| "no such filter".to_owned())?;
        let module = f.module.as_ref().map_err(|reason| format!("its module was refused: {reason}"))?;
        let key = (name.to_owned(), config.map(Value::to_string).unwrap_or_default(), occurrence);
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.retain(|_, w| w.strong_count() > 0);
        if let Some(live) = instances.get(&key).and_then(Weak::upgrade) {
            return Ok((module.name, live));
        }
        let bytes: Arc<[u8]> = config_bytes(config).into();
        let inst = FilterInstance::new(module.clone(), self.shared.clone(), bytes, self.workers)?;
        instances.insert(key, Arc::downgrade(&inst));
        Ok((module.name, inst))
    }
}
