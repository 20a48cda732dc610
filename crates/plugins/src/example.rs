//! The plugin kit's example (`tag-session`, see `docs/PLUGINS.md`): tags
//! each session's log entry, records which phases ran for it, can refuse
//! clients that send no server name, and with `count_bytes` has a data
//! phase that lets every byte through and counts them (what a data-phase
//! plugin costs by itself: the benchmark runs it).
//!
//! It is compiled in but not bundled: it runs only where the `plugins`
//! setting names it (`plugins = ["bundled", "tag-session"]`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;

use strait_plugin::{Conf, ConfigureCx, ConfigureError, Data, DataVerdict, Instance, Plugin, Session, Status, Verdict};

/// The plugin: a name, a priority and a schema.
#[derive(Debug)]
pub struct TagSession;

/// Its typed configuration.
#[derive(Debug)]
pub struct TagConfig {
    tag: String,
    require_sni: bool,
    count_bytes: bool,
}

impl Plugin for TagSession {
    type Config = TagConfig;

    fn name(&self) -> &'static str {
        "tag-session"
    }

    fn priority(&self) -> i32 {
        1000
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<TagConfig> {
        let tag = conf.required_string("tag");
        let require_sni = conf.boolean("require_sni", false);
        let count_bytes = conf.boolean("count_bytes", false);
        Some(TagConfig { tag: tag?, require_sni, count_bytes })
    }

    fn configure(&self, config: TagConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        // State kept across configuration changes, by plugin id.
        let seen = cx.state::<AtomicU64>();
        Ok(Arc::new(Tagger { config, seen }))
    }
}

/// One configured instance.
struct Tagger {
    config: TagConfig,
    seen: Arc<AtomicU64>,
}

/// What this plugin keeps per session, in the session's context.
#[derive(Default)]
struct Phases(Vec<&'static str>);

/// Bytes seen each way, with `count_bytes`.
#[derive(Default)]
struct Counted {
    downstream: u64,
    upstream: u64,
}

impl Instance for Tagger {
    fn data_phase(&self) -> bool {
        self.config.count_bytes
    }

    fn on_connect(&self, s: &mut Session) -> Verdict {
        s.ctx().get_or_default::<Phases>().0.push("connect");
        Verdict::Continue
    }

    fn on_downstream_data(&self, s: &mut Session, data: &mut Data<'_>) -> DataVerdict {
        s.ctx().get_or_default::<Counted>().downstream += data.len() as u64;
        DataVerdict::Continue
    }

    fn on_upstream_data(&self, s: &mut Session, data: &mut Data<'_>) -> DataVerdict {
        s.ctx().get_or_default::<Counted>().upstream += data.len() as u64;
        DataVerdict::Continue
    }

    fn certificate(&self, s: &mut Session) -> Verdict {
        s.ctx().get_or_default::<Phases>().0.push("certificate");
        Verdict::Continue
    }

    fn preread(&self, s: &mut Session) -> Verdict {
        s.ctx().get_or_default::<Phases>().0.push("preread");
        if self.config.require_sni && s.sni().is_none() {
            return Verdict::reject(Status::Forbidden, "a server name is required".to_owned());
        }
        Verdict::Continue
    }

    fn log(&self, s: &mut Session) {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        let phases = {
            let p = s.ctx().get_or_default::<Phases>();
            p.0.push("log");
            p.0.clone()
        };
        let mut entry = json!({ "tag": self.config.tag, "phases": phases, "session_number": n });
        if self.config.count_bytes {
            let c = s.ctx().get_or_default::<Counted>();
            entry["bytes"] = json!({ "downstream": c.downstream, "upstream": c.upstream });
        }
        s.add_log_field("tag_session", entry);
    }
}
