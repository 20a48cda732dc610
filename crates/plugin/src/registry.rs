//! The plugins a process knows ([`Registry`], filled by the binary), and what
//! lives across configurations for them ([`Plugins`]: per-instance state
//! such as connection counts, and the metrics).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use serde_json::{Map, Value};
use strait_model::{Config, ConfigCheck, PluginSchemas, Protocol};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::{Conf, ConfigureError, Instance, Plugin};

/// A [`Plugin`] with its config type erased, so plugins of any config type
/// sit in one list.
pub(crate) trait Erased: Send + Sync {
    fn name(&self) -> &'static str;
    fn priority(&self) -> i32;
    fn protocols(&self) -> &'static [Protocol];
    fn check(&self, config: &Map<String, Value>) -> ConfigCheck;
    fn build(&self, config: &Map<String, Value>, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, Refused>;
    fn describe(&self) -> Value;
}

/// Why [`Erased::build`] gave no instance.
pub(crate) enum Refused {
    /// Fields of `config` (paths below it), with messages.
    Fields(Vec<(String, String)>),
    Reason(String),
}

impl<P: Plugin> Erased for P {
    fn describe(&self) -> Value {
        // As in `check`: a plugin's panic must not take the Admin API down.
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let empty = Map::new();
            let mut conf = Conf::describing(&empty);
            let _ = self.schema(&mut conf);
            conf.schema_fields()
        }))
        .unwrap_or_else(|_| Value::Array(Vec::new()))
    }
    fn name(&self) -> &'static str {
        Plugin::name(self)
    }
    fn priority(&self) -> i32 {
        Plugin::priority(self)
    }
    fn protocols(&self) -> &'static [Protocol] {
        Plugin::protocols(self)
    }
    fn check(&self, config: &Map<String, Value>) -> ConfigCheck {
        // A plugin's own code must not take the control plane down.
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut conf = Conf::new(config);
            let parsed = self.schema(&mut conf).is_some();
            (parsed, conf.finish())
        }));
        match checked {
            Ok((true, filled)) => filled,
            Ok((false, Err(errors))) => Err(errors),
            Ok((false, Ok(_))) => Err(vec![("@entity".to_owned(), "invalid configuration".to_owned())]),
            Err(_) => Err(vec![("@entity".to_owned(), "the plugin panicked checking its configuration".to_owned())]),
        }
    }
    fn build(&self, config: &Map<String, Value>, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, Refused> {
        let mut conf = Conf::new(config);
        let parsed = self.schema(&mut conf);
        conf.finish().map_err(Refused::Fields)?;
        let Some(c) = parsed else {
            return Err(Refused::Reason("invalid configuration".to_owned()));
        };
        self.configure(c, cx).map_err(|e| match e {
            ConfigureError::Field { field, message } => Refused::Fields(vec![(field, message)]),
            ConfigureError::Other(reason) => Refused::Reason(reason),
        })
    }
}

/// The plugins compiled into this binary, by name. The binary fills it
/// (with the built-ins and its own), once per process.
#[derive(Clone, Default)]
pub struct Registry {
    plugins: Vec<Arc<dyn Erased>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.plugins.iter().map(|p| p.name())).finish()
    }
}

impl Registry {
    /// Adds a plugin (replacing one of the same name).
    pub fn with<P: Plugin>(mut self, plugin: P) -> Registry {
        self.plugins.retain(|p| p.name() != plugin.name());
        self.plugins.push(Arc::new(plugin));
        self
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.plugins.iter().map(|p| p.name())
    }

    /// Kong's `/schemas/plugins/{name}`: the entity's fields with the
    /// plugin's `config` record described field by field.
    pub fn schema(&self, name: &str) -> Option<Value> {
        let p = self.get(name)?;
        let protocols: Vec<&str> = p.protocols().iter().map(|x| x.as_str()).collect();
        Some(serde_json::json!({
            "fields": [
                {"id": {"type": "string", "uuid": true, "auto": true}},
                {"name": {"type": "string", "required": true}},
                {"instance_name": {"type": "string"}},
                {"created_at": {"type": "integer", "timestamp": true, "auto": true}},
                {"updated_at": {"type": "integer", "timestamp": true, "auto": true}},
                {"route": {"type": "foreign", "reference": "routes", "default": null}},
                {"service": {"type": "foreign", "reference": "services", "default": null}},
                {"consumer": {"type": "foreign", "reference": "consumers", "default": null, "eq": null}},
                {"protocols": {"type": "set", "required": true, "default": protocols,
                    "elements": {"type": "string", "one_of": protocols}}},
                {"enabled": {"type": "boolean", "default": true}},
                {"tags": {"type": "set", "elements": {"type": "string"}}},
                {"config": {"type": "record", "required": true, "fields": p.describe()}},
            ]
        }))
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<dyn Erased>> {
        self.plugins.iter().find(|p| p.name() == name)
    }
}

impl PluginSchemas for Registry {
    fn check(
        &self,
        name: &str,
        config: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, Vec<(String, String)>>> {
        self.get(name).map(|p| p.check(config))
    }

    fn protocols(&self, name: &str) -> Option<&'static [Protocol]> {
        self.get(name).map(|p| p.protocols())
    }
}

type StateKey = (Uuid, TypeId);

/// The registry plus what outlives one snapshot: plugin state by instance
/// id (so a configuration change does not reset a connection limit's counts)
/// and the metrics.
pub struct Plugins {
    /// Shared with the loader (as its `PluginSchemas`): one per process.
    registry: Arc<Registry>,
    state: Mutex<HashMap<StateKey, Weak<dyn Any + Send + Sync>>>,
    /// The states among those that cross an upgrade, by id and type name.
    carriers: Mutex<HashMap<String, Weak<dyn Carry>>>,
    metrics: Arc<Metrics>,
    /// The filter runtime (proxy-wasm), when one is loaded.
    filters: Option<Arc<dyn Filters>>,
}

/// A runtime of filters loaded at run time (proxy-wasm): each filter of a
/// filter chain, and each filter configured as a plugin, becomes an
/// [`Instance`] with a data phase, run after the native plugins.
pub trait Filters: Send + Sync {
    /// The instance of filter `name` with `config` (checked by the loader
    /// already). `occurrence` counts the equal filters (name and config)
    /// before this one in the same route's list: each must be an instance
    /// of its own, while equal filters of different routes may share one.
    /// Gives the filter's name as logs show it. An error is the filter
    /// refusing its configuration, or failing to start.
    fn build(
        &self,
        name: &str,
        config: Option<&Value>,
        occurrence: usize,
    ) -> Result<(&'static str, Arc<dyn Instance>), String>;
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins").field("registry", &self.registry).finish_non_exhaustive()
    }
}

impl Plugins {
    pub fn new(registry: Registry) -> Arc<Plugins> {
        Plugins::with_filters(registry, Arc::new(Metrics::default()), None)
    }

    /// With a filter runtime, and the metrics it exports into.
    pub fn with_filters(registry: Registry, metrics: Arc<Metrics>, filters: Option<Arc<dyn Filters>>) -> Arc<Plugins> {
        let registry = Arc::new(registry);
        Arc::new(Plugins { registry, state: Mutex::new(HashMap::new()), carriers: Mutex::default(), metrics, filters })
    }

    /// The filter runtime, when one is loaded.
    pub fn filters(&self) -> Option<&Arc<dyn Filters>> {
        self.filters.as_ref()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The schemas, for the configuration loader.
    pub fn schemas(&self) -> Arc<dyn PluginSchemas> {
        self.registry.clone()
    }

    /// Whether a plugin of this name is registered.
    pub fn has(&self, name: &str) -> bool {
        self.registry.get(name).is_some()
    }
}

/// What [`Plugin::configure`] may use besides its own config.
pub struct ConfigureCx<'a> {
    pub(crate) config: &'a Config,
    pub(crate) id: Uuid,
    pub(crate) plugins: &'a Plugins,
}

impl std::fmt::Debug for ConfigureCx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigureCx").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ConfigureCx<'_> {
    /// The whole configuration being compiled.
    pub fn config(&self) -> &Config {
        self.config
    }

    /// The plugin entity's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// State of type `T` for this plugin instance, kept across snapshots for
    /// as long as an instance or a session holds it.
    pub fn state<T: Any + Send + Sync + Default>(&self) -> Arc<T> {
        let key = (self.id, TypeId::of::<T>());
        let mut map = self.plugins.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
            if let Ok(typed) = existing.downcast::<T>() {
                return typed;
            }
        }
        map.retain(|_, w| w.strong_count() > 0);
        let fresh = Arc::new(T::default());
        let erased: Arc<dyn Any + Send + Sync> = fresh.clone();
        map.insert(key, Arc::downgrade(&erased));
        fresh
    }

    /// The process-wide metrics (for the prometheus plugin).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.plugins.metrics
    }

    /// [`ConfigureCx::state`] for state that crosses a binary upgrade (a
    /// limiter's windows and counts): the generation leaving exports it, the
    /// next one takes it in ([`Carry`]).
    pub fn carried_state<T: Carry + Default>(&self) -> Arc<T> {
        let state = self.state::<T>();
        let key = format!("{}/{}", self.id, std::any::type_name::<T>());
        let mut carriers = self.plugins.carriers.lock().unwrap_or_else(|p| p.into_inner());
        carriers.retain(|_, w| w.strong_count() > 0);
        let erased: Arc<dyn Carry> = state.clone();
        carriers.insert(key, Arc::downgrade(&erased));
        state
    }
}

/// Plugin state a binary upgrade carries from one generation to the next.
/// All three calls come from the host's control thread, never a session's.
pub trait Carry: Any + Send + Sync {
    /// What the next generation needs, as JSON.
    fn export(&self) -> Value;
    /// Takes in what the previous generation exported (possibly twice: when
    /// the next generation starts, and when the previous one stops
    /// accepting). Bad input is ignored field by field.
    fn import(&self, from: &Value);
    /// The previous generation has exited: what was counted for its
    /// sessions and did not move here is let go.
    fn settle(&self) {}
}

impl Plugins {
    /// Every carried state, keyed by plugin id and type.
    pub fn export_state(&self) -> Value {
        let carriers = self.carriers.lock().unwrap_or_else(|p| p.into_inner());
        let all: serde_json::Map<String, Value> =
            carriers.iter().filter_map(|(k, w)| Some((k.clone(), w.upgrade()?.export()))).collect();
        Value::Object(all)
    }

    /// Takes in what [`Plugins::export_state`] gave in the previous
    /// generation, for the states this one has too.
    pub fn import_state(&self, from: &Value) {
        let carriers = self.carriers.lock().unwrap_or_else(|p| p.into_inner());
        for (k, w) in carriers.iter() {
            if let (Some(v), Some(state)) = (from.get(k), w.upgrade()) {
                state.import(v);
            }
        }
    }

    /// The previous generation has exited.
    pub fn settle_state(&self) {
        let carriers = self.carriers.lock().unwrap_or_else(|p| p.into_inner());
        for state in carriers.values().filter_map(Weak::upgrade) {
            state.settle();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Required fields first, each read with `?`, then optional ones.
    struct Strict(bool);

    impl Plugin for Strict {
        type Config = ();
        fn name(&self) -> &'static str {
            "strict"
        }
        fn priority(&self) -> i32 {
            0
        }
        fn schema(&self, conf: &mut Conf<'_>) -> Option<()> {
            assert!(!self.0, "a plugin whose schema panics");
            let _host = conf.required_string("host")?;
            let _port = conf.required_integer("port", 1..=65535)?;
            let _limit = conf.integer("limit", None, 1..=10)?;
            let _rate = conf.record("rate", |r| r.positive_number("per_second", None))?;
            conf.boolean("verbose", false);
            conf.is_ok().then_some(())
        }
        fn configure(&self, _c: (), _cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
            Err("not built in this test".into())
        }
    }

    #[test]
    fn every_field_is_described_and_a_panic_is_contained() {
        let fields = Erased::describe(&Strict(false));
        let names: Vec<String> =
            fields.as_array().expect("a list").iter().filter_map(|f| f.as_object()?.keys().next().cloned()).collect();
        assert_eq!(names, ["host", "port", "limit", "rate", "verbose"]);
        assert_eq!(fields[3]["rate"]["fields"][0]["per_second"]["type"], "number");
        // Describing reports no errors, and checking still does.
        assert!(Erased::check(&Strict(false), &Map::new()).is_err());
        assert_eq!(Erased::describe(&Strict(true)), Value::Array(Vec::new()));
    }
}
