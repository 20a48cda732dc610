//! Per-route plugin chains, compiled once per snapshot, and the running of
//! their phases for a session.
//!
//! Kong's precedence decides which instance of a plugin applies to a route:
//! one configured on the route and its service, then on the route, then on
//! the service, then a global one. The chosen instances run in priority
//! order (higher first). A phase that panics is contained: the session ends
//! with status 500 (or, in `log`, the other plugins still run).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use strait_model::{Config, Protocol, ProtocolSet, RouteIdx, ServiceIdx};

use crate::record::SessionRecord;
use crate::registry::{ConfigureCx, Plugins, Refused};
use crate::{Instance, Session, Status, Verdict};

/// The longest a plugin may hold a session in one `Delay`.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(60);

/// Why the plugin chains of a configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// Fields of a plugin's `config` (paths below `config`) refused it.
    #[error("plugin '{plugin}': {}", field_list(.fields))]
    Fields { plugin: String, fields: Vec<(String, String)> },
    /// The plugin refused its configuration for another reason.
    #[error("plugin '{plugin}': {reason}")]
    Plugin { plugin: String, reason: String },
    /// A filter (of a filter chain, or configured as a plugin) could not be
    /// built or refused its configuration.
    #[error("filter '{filter}' of {owner}: {reason}")]
    Filter { filter: String, owner: String, reason: String },
}

fn field_list(fields: &[(String, String)]) -> String {
    fields.iter().map(|(f, m)| format!("config.{f}: {m}")).collect::<Vec<_>>().join("; ")
}

/// One plugin instance in a chain.
#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) name: &'static str,
    priority: i32,
    /// Where it runs: the instance's `protocols` within what the plugin serves.
    pub(crate) runs_on: ProtocolSet,
    pub(crate) instance: Arc<dyn Instance>,
}

/// The plugins of one route (or the global ones), in the order they run.
#[derive(Default)]
pub struct Chain {
    pub(crate) entries: Vec<Entry>,
    /// The route's TLS server configuration when a plugin verifies client
    /// certificates (mtls-auth).
    tls_server: Option<Arc<ServerConfig>>,
    /// The shortest progress interval among the instances.
    progress_every: Option<Duration>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries.iter().map(|e| e.name)).finish()
    }
}

/// How a phase ended for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseOutcome {
    Continue,
    Reject { status: Status, message: Option<String>, plugin: &'static str },
}

impl Chain {
    /// The TLS server configuration the route's handshakes need when a
    /// plugin verifies client certificates (mtls-auth).
    #[inline]
    pub fn tls_server(&self) -> Option<&Arc<ServerConfig>> {
        self.tls_server.as_ref()
    }

    /// How often the relay should call [`Chain::progress`], if ever.
    #[inline]
    pub fn progress_every(&self) -> Option<Duration> {
        self.progress_every
    }

    /// The names of the plugins, in the order they run.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.entries.iter().map(|e| e.name)
    }

    /// The host terminated the session's TLS: plugins see it from now on.
    /// Here rather than on [`Session`], where a phase could call it.
    pub fn tls_terminated(&self, s: &mut Session, tls: crate::TlsInfo) {
        s.set_tls(tls);
    }

    /// The `certificate` phase (TLS termination, before the handshake).
    pub async fn certificate(&self, s: &mut Session) -> PhaseOutcome {
        let proto = s.protocol();
        for e in self.entries.iter().filter(|e| e.runs_on.contains(proto)) {
            match guarded(e, || e.instance.certificate(s)) {
                Verdict::Continue => {}
                Verdict::Delay(d) => tokio::time::sleep(d.min(MAX_DELAY)).await,
                Verdict::Wait(r) => {
                    if let Some((status, message)) = wait(&r).await {
                        return PhaseOutcome::Reject { status, message, plugin: e.name };
                    }
                }
                Verdict::Reject { status, message } => return PhaseOutcome::Reject { status, message, plugin: e.name },
            }
        }
        PhaseOutcome::Continue
    }

    /// The `preread` phase: stops at the first rejection.
    pub async fn preread(&self, s: &mut Session) -> PhaseOutcome {
        let proto = s.protocol();
        for e in self.entries.iter().filter(|e| e.runs_on.contains(proto)) {
            match guarded(e, || e.instance.preread(s)) {
                Verdict::Continue => {}
                Verdict::Delay(d) => tokio::time::sleep(d.min(MAX_DELAY)).await,
                Verdict::Wait(r) => {
                    if let Some((status, message)) = wait(&r).await {
                        return PhaseOutcome::Reject { status, message, plugin: e.name };
                    }
                }
                Verdict::Reject { status, message } => return PhaseOutcome::Reject { status, message, plugin: e.name },
            }
        }
        PhaseOutcome::Continue
    }

    /// The `log` phase, with the session's `record`: every plugin runs,
    /// whatever the others do. Gives the record back (for the access log).
    pub fn log(&self, s: &mut Session, record: SessionRecord) -> SessionRecord {
        s.set_record(Some(record));
        let proto = s.protocol();
        for e in self.entries.iter().filter(|e| e.runs_on.contains(proto)) {
            if catch_unwind(AssertUnwindSafe(|| e.instance.log(s))).is_err() {
                tracing::error!(plugin = e.name, "plugin panicked in the log phase");
            }
        }
        match s.set_record(None) {
            Some(r) => r,
            None => unreachable!("the record was set above and plugins cannot take it"),
        }
    }

    /// A session a binary upgrade moved here, `elapsed` into its life: each
    /// instance takes back what the session holds ([`Instance::adopt`]), and
    /// progress reports go on from where the previous generation was.
    pub fn adopt(&self, s: &mut Session, elapsed: Duration) {
        let proto = s.protocol();
        s.progress_marks = self
            .entries
            .iter()
            .map(|e| {
                e.instance
                    .progress_interval()
                    .map_or(0, |every| (elapsed.as_millis() / every.as_millis().max(1)) as u64)
            })
            .collect();
        for e in self.entries.iter().filter(|e| e.runs_on.contains(proto)) {
            if catch_unwind(AssertUnwindSafe(|| e.instance.adopt(s))).is_err() {
                tracing::error!(plugin = e.name, "plugin panicked adopting a moved session");
            }
        }
    }

    /// Periodic progress for long sessions, with the record so far: each
    /// instance at its own interval, measured from the session's start
    /// (`elapsed`).
    pub fn progress(&self, s: &mut Session, so_far: SessionRecord, elapsed: Duration) {
        s.set_record(Some(so_far));
        self.run_progress(s, elapsed);
        s.set_record(None);
    }

    fn run_progress(&self, s: &mut Session, elapsed: Duration) {
        let proto = s.protocol();
        if s.progress_marks.len() != self.entries.len() {
            s.progress_marks = vec![0; self.entries.len()];
        }
        for (i, e) in self.entries.iter().enumerate() {
            let Some(every) = e.instance.progress_interval().filter(|_| e.runs_on.contains(proto)) else {
                continue;
            };
            let due = (elapsed.as_millis() / every.as_millis().max(1)) as u64;
            if due > s.progress_marks[i] {
                s.progress_marks[i] = due;
                if catch_unwind(AssertUnwindSafe(|| e.instance.progress(s))).is_err() {
                    tracing::error!(plugin = e.name, "plugin panicked reporting progress");
                }
            }
        }
    }
}

/// A `Verdict::Wait`: until resumed (or refused: the refusal). A session
/// still held after [`MAX_DELAY`] is refused (503): a hold fails closed,
/// and a forgotten one does not keep a session forever.
pub(crate) async fn wait(r: &crate::Resume) -> Option<(Status, Option<String>)> {
    match tokio::time::timeout(MAX_DELAY, r.resumed()).await {
        Ok(refusal) => refusal,
        Err(_) => Some((Status::Unavailable, Some("held for 60 s without being resumed".to_owned()))),
    }
}

/// Runs a phase, turning a panic into a 500 rejection of this session only.
pub(crate) fn guarded(e: &Entry, phase: impl FnOnce() -> Verdict) -> Verdict {
    match catch_unwind(AssertUnwindSafe(phase)) {
        Ok(v) => v,
        Err(_) => {
            tracing::error!(plugin = e.name, "plugin panicked; the session ends with 500");
            Verdict::reject(Status::InternalError, None)
        }
    }
}

/// Every route's chain, and the global chain (for sessions without a route
/// and for the `certificate` phase). `None` where no plugin applies.
#[derive(Debug, Default)]
pub struct Chains {
    routes: Vec<Option<Arc<Chain>>>,
    global: Option<Arc<Chain>>,
    /// Routes a global mtls-auth closes to sessions other than TLS (403,
    /// failing closed): announced when the snapshot goes live.
    closed_by_global_mtls: Vec<String>,
}

impl Chains {
    /// The chain of a route (with the global plugins), if any plugin applies.
    #[inline]
    pub fn route(&self, route: RouteIdx) -> Option<&Arc<Chain>> {
        self.routes.get(route.0).and_then(Option::as_ref)
    }

    /// The global plugins, for sessions without a route and the
    /// `certificate` phase.
    #[inline]
    pub fn global(&self) -> Option<&Arc<Chain>> {
        self.global.as_ref()
    }

    /// Says what the operator should know of these chains, once they are live.
    pub fn announce(&self) {
        if let Some(first) = self.closed_by_global_mtls.first() {
            // Failing closed is right, but it should not come as a surprise.
            tracing::warn!(
                routes = self.closed_by_global_mtls.len(),
                first = %first,
                "a global mtls-auth refuses (403) every session without a verified client certificate, \
                 so the non-TLS protocols of these routes (tcp, tls_passthrough, udp) are closed"
            );
        }
    }
}

/// Builds a TLS server configuration that verifies client certificates.
pub type TlsWithClientAuth<'a> = dyn Fn(&strait_tls::ClientAuth) -> Result<Arc<ServerConfig>, String> + 'a;

impl Chains {
    /// Builds the chains of `config`: each enabled plugin entity is
    /// configured once, and the instances that apply to each route are
    /// ordered. `tls_with_client_auth` makes the TLS configuration of routes
    /// whose plugins verify client certificates.
    pub fn compile(
        config: &Config,
        plugins: &Plugins,
        tls_with_client_auth: &TlsWithClientAuth<'_>,
    ) -> Result<Chains, ChainError> {
        struct Built {
            idx: usize,
            name: &'static str,
            priority: i32,
            runs_on: ProtocolSet,
            instance: Arc<dyn Instance>,
        }
        let mut built = Vec::new();
        for (idx, p) in config.plugins.iter().enumerate() {
            if !p.enabled {
                continue;
            }
            // Kong's HTTP-only plugins have no stream phases: nothing to run.
            let Some(plugin) = plugins.registry().get(&p.name) else {
                continue;
            };
            let label = || p.instance_name.clone().unwrap_or_else(|| format!("{} ({})", p.name, p.meta.id));
            let mut runs_on = ProtocolSet::default();
            for proto in plugin.protocols() {
                if p.protocols.is_none_or(|set| set.contains(*proto)) {
                    runs_on.insert(*proto);
                }
            }
            if runs_on.is_empty() {
                continue;
            }
            let cx = ConfigureCx { config, id: p.meta.id, plugins };
            // A plugin's own code must not take the control plane down.
            // Filters configured as plugins are built below, with the chains.
            let Some(record) = p.config.record() else {
                continue;
            };
            let instance = catch_unwind(AssertUnwindSafe(|| plugin.build(record, &cx)))
                .unwrap_or_else(|_| Err(Refused::Reason("the plugin panicked while being configured".to_owned())))
                .map_err(|refused| match refused {
                    Refused::Fields(fields) => ChainError::Fields { plugin: label(), fields },
                    Refused::Reason(reason) => ChainError::Plugin { plugin: label(), reason },
                })?;
            built.push(Built { idx, name: plugin.name(), priority: plugin.priority(), runs_on, instance });
        }
        let filters = build_filters(config, plugins)?;
        if built.is_empty() && filters.iter().all(Vec::is_empty) {
            return Ok(Chains { routes: vec![None; config.routes.len()], ..Chains::default() });
        }

        // One TLS configuration per verifier, shared by the routes using it.
        let mut tls_configs: Vec<(*const Built, Arc<ServerConfig>)> = Vec::new();
        let mut make = |chosen: Vec<(&Built, ProtocolSet)>,
                        filters: &[Entry]|
         -> Result<Option<Arc<Chain>>, ChainError> {
            if chosen.is_empty() && filters.is_empty() {
                return Ok(None);
            }
            let mut tls_server = None;
            for (b, on) in &chosen {
                if on.contains(Protocol::Tls) {
                    if let Some(auth) = b.instance.client_auth() {
                        let key: *const Built = *b;
                        let cfg = match tls_configs.iter().find(|(k, _)| *k == key) {
                            Some((_, c)) => c.clone(),
                            None => {
                                let c = tls_with_client_auth(&auth)
                                    .map_err(|reason| ChainError::Plugin { plugin: b.name.to_owned(), reason })?;
                                tls_configs.push((key, c.clone()));
                                c
                            }
                        };
                        tls_server = Some(cfg);
                    }
                }
            }
            let mut entries: Vec<Entry> = chosen
                .iter()
                .map(|(b, on)| Entry { name: b.name, priority: b.priority, runs_on: *on, instance: b.instance.clone() })
                .collect();
            entries.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(b.name)));
            // Filters run after every native plugin, in their own order.
            entries.extend(filters.iter().map(Entry::clone));
            let progress_every = entries.iter().filter_map(|e| e.instance.progress_interval()).min();
            Ok(Some(Arc::new(Chain { entries, tls_server, progress_every })))
        };

        let scope = |b: &Built| {
            let p = &config.plugins[b.idx];
            (p.route, p.service)
        };
        let globals: Vec<(&Built, ProtocolSet)> =
            built.iter().filter(|b| scope(b) == (None, None)).map(|b| (b, b.runs_on)).collect();
        let global = make(globals, &[])?;

        // Instances by the route and by the service they name.
        let mut by_route: HashMap<usize, Vec<&Built>> = HashMap::new();
        let mut by_service: HashMap<usize, Vec<&Built>> = HashMap::new();
        for b in &built {
            match scope(b) {
                (Some(r), _) => by_route.entry(r.0).or_default().push(b),
                (None, Some(s)) => by_service.entry(s.0).or_default().push(b),
                (None, None) => {}
            }
        }
        let mut routes = Vec::with_capacity(config.routes.len());
        // Routes that a global mtls-auth closes to sessions other than TLS.
        let mut closed_by_global_mtls = Vec::new();
        for (ri, route) in config.routes.iter().enumerate() {
            let own = by_route.get(&ri).map_or(&[][..], Vec::as_slice);
            let of_service = route.service.and_then(|s| by_service.get(&s.0)).map_or(&[][..], Vec::as_slice);
            // Verifies client certificates on a protocol of this route that has none.
            let closes = |b: &Built, on: ProtocolSet| {
                b.instance.client_auth().is_some()
                    && route.protocols.iter().any(|p| p != Protocol::Tls && on.contains(p))
            };
            let route_filters = filters.get(ri).map_or(&[][..], Vec::as_slice);
            if own.is_empty() && of_service.is_empty() && route_filters.is_empty() {
                if built.iter().any(|b| scope(b) == (None, None) && closes(b, b.runs_on)) {
                    closed_by_global_mtls.push(route.label());
                }
                // Only global plugins: the global chain itself.
                routes.push(global.clone());
                continue;
            }
            // Rank by specificity; `None` when the instance does not apply.
            let rank = |b: &Built| match scope(b) {
                (Some(r), Some(s)) if r.0 == ri && route.service == Some(s) => Some(3u8),
                (Some(r), None) if r.0 == ri => Some(2),
                (None, Some(s)) if route.service == Some(s) => Some(1),
                (None, None) => Some(0),
                _ => None,
            };
            let candidates: Vec<&Built> = own
                .iter()
                .chain(of_service)
                .copied()
                .chain(built.iter().filter(|b| scope(b) == (None, None)))
                .collect();
            // For each protocol, the most specific instance of each name that
            // runs on it: an instance narrowed to other protocols does not
            // hide a less specific one for this protocol.
            let mut chosen: Vec<(&Built, ProtocolSet)> = Vec::new();
            // Only the route's own protocols: its sessions have no other, and
            // an instance narrowed to `tls` on a service must not count
            // against the service's tcp-only routes.
            for proto in route.protocols.iter() {
                let mut best: Vec<(&Built, u8)> = Vec::new();
                for b in candidates.iter().filter(|b| b.runs_on.contains(proto)) {
                    let Some(r) = rank(b) else { continue };
                    match best.iter_mut().find(|(x, _)| x.name == b.name) {
                        Some(slot) if slot.1 < r => *slot = (b, r),
                        Some(_) => {}
                        None => best.push((b, r)),
                    }
                }
                for (b, _) in best {
                    match chosen.iter_mut().find(|(x, _)| std::ptr::eq(*x, b)) {
                        Some((_, on)) => on.insert(proto),
                        None => {
                            let mut on = ProtocolSet::default();
                            on.insert(proto);
                            chosen.push((b, on));
                        }
                    }
                }
            }
            // mtls-auth needs a route that terminates TLS.
            if chosen.iter().any(|(b, _)| b.instance.client_auth().is_some() && rank(b) >= Some(1))
                && !route.protocols.contains(Protocol::Tls)
            {
                return Err(ChainError::Plugin {
                    plugin: "mtls-auth".to_owned(),
                    reason: format!("route '{}' must have protocol 'tls' to verify client certificates", route.label()),
                });
            }
            if chosen.iter().any(|(b, on)| rank(b) == Some(0) && closes(b, *on)) {
                closed_by_global_mtls.push(route.label());
            }
            routes.push(make(chosen, route_filters)?);
        }
        Ok(Chains { routes, global, closed_by_global_mtls })
    }
}

/// Each route's filters, in the order they run: the service's filter chain,
/// the route's, then filters configured as plugins (on the service, then on
/// the route). Equal filters (same name and configuration) share one
/// instance across routes, except within one route's list, where the n-th
/// equal one is its own (`occurrence`): a session holds one context per
/// instance. Empty lists when no filter runtime is loaded (the loader then
/// refuses any filter).
fn build_filters(config: &Config, plugins: &Plugins) -> Result<Vec<Vec<Entry>>, ChainError> {
    let Some(runtime) = plugins.filters() else {
        return Ok(vec![Vec::new(); config.routes.len()]);
    };
    let stream: ProtocolSet = strait_model::FILTER_PROTOCOLS.iter().fold(ProtocolSet::default(), |mut set, p| {
        set.insert(*p);
        set
    });
    /// A filter to run, before it is built.
    struct Wanted<'a> {
        name: &'a str,
        config: Option<&'a serde_json::Value>,
        runs_on: ProtocolSet,
        owner: String,
    }
    fn of_chain<'a>(
        config: &'a Config,
        route: Option<RouteIdx>,
        service: Option<ServiceIdx>,
        stream: ProtocolSet,
        out: &mut Vec<Wanted<'a>>,
    ) {
        let found = config.filter_chains.iter().find(|fc| {
            fc.enabled && fc.route == route && fc.service == service && (route.is_some() || service.is_some())
        });
        if let Some(fc) = found {
            for f in fc.filters.iter().filter(|f| f.enabled) {
                out.push(Wanted {
                    name: &f.name,
                    config: f.config.as_ref(),
                    runs_on: stream,
                    owner: format!("filter chain '{}'", fc.label()),
                });
            }
        }
    }
    fn as_plugins<'a>(
        config: &'a Config,
        route: Option<RouteIdx>,
        service: Option<ServiceIdx>,
        stream: ProtocolSet,
        out: &mut Vec<Wanted<'a>>,
    ) {
        for p in config.plugins.iter().filter(|p| p.enabled && p.route == route && p.service == service) {
            let strait_model::PluginConfig::Filter(cfg) = &p.config else { continue };
            let runs_on = match p.protocols {
                Some(set) => stream.iter().filter(|x| set.contains(*x)).fold(ProtocolSet::default(), |mut acc, x| {
                    acc.insert(x);
                    acc
                }),
                None => stream,
            };
            let owner = format!("plugin '{}'", p.instance_name.clone().unwrap_or_else(|| p.meta.id.to_string()));
            out.push(Wanted { name: &p.name, config: cfg.as_ref(), runs_on, owner });
        }
    }
    type Built = (&'static str, Arc<dyn Instance>);
    let mut built: HashMap<(String, String, usize), Built> = HashMap::new();
    let mut out = Vec::with_capacity(config.routes.len());
    for (ri, route) in config.routes.iter().enumerate() {
        let ri = RouteIdx(ri);
        let mut wanted = Vec::new();
        if let Some(si) = route.service {
            of_chain(config, None, Some(si), stream, &mut wanted);
        }
        of_chain(config, Some(ri), None, stream, &mut wanted);
        if let Some(si) = route.service {
            as_plugins(config, None, Some(si), stream, &mut wanted);
        }
        as_plugins(config, Some(ri), None, stream, &mut wanted);
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        let mut list = Vec::with_capacity(wanted.len());
        for w in wanted {
            let text = w.config.map(|c| c.to_string()).unwrap_or_default();
            let n = seen.entry((w.name.to_owned(), text.clone())).or_insert(0);
            let occurrence = *n;
            *n += 1;
            let key = (w.name.to_owned(), text, occurrence);
            let (name, instance) = match built.get(&key) {
                Some(b) => b.clone(),
                None => {
                    let made = catch_unwind(AssertUnwindSafe(|| runtime.build(w.name, w.config, occurrence)))
                        .unwrap_or_else(|_| Err("the filter runtime panicked".to_owned()))
                        .map_err(|reason| ChainError::Filter { filter: w.name.to_owned(), owner: w.owner, reason })?;
                    built.insert(key, made.clone());
                    made
                }
            };
            list.push(Entry { name, priority: 0, runs_on: w.runs_on, instance });
        }
        out.push(list);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::json;
    use strait_model::{Options, PluginNames, RouteIdx};

    use super::*;
    use crate::{Conf, ConfigureError, Facts, Plugin, Registry, Session};

    /// Records its name in the log fields; panics in preread when told to.
    struct Probe(&'static str);
    struct ProbeInstance {
        tag: String,
        panic: bool,
    }
    impl Plugin for Probe {
        type Config = (String, bool);
        fn name(&self) -> &'static str {
            self.0
        }
        fn priority(&self) -> i32 {
            if self.0 == "high" { 100 } else { 1 }
        }
        fn schema(&self, conf: &mut Conf<'_>) -> Option<(String, bool)> {
            let tag = conf.required_string("tag");
            let panic = conf.boolean("panic", false);
            Some((tag?, panic))
        }
        fn configure(
            &self,
            (tag, panic): (String, bool),
            _cx: &ConfigureCx<'_>,
        ) -> Result<Arc<dyn Instance>, ConfigureError> {
            Ok(Arc::new(ProbeInstance { tag, panic }))
        }
    }
    impl Instance for ProbeInstance {
        fn preread(&self, s: &mut Session) -> Verdict {
            assert!(!self.panic, "a misbehaving plugin");
            let mut ran: Vec<serde_json::Value> =
                s.log_fields().get("ran").and_then(|v| v.as_array().cloned()).unwrap_or_default();
            ran.push(json!(self.tag));
            s.add_log_field("ran", json!(ran));
            Verdict::Continue
        }
        fn log(&self, _s: &mut Session) {
            panic!("log panics too");
        }
    }

    /// The chains of `yaml`, with the probes as its plugins.
    fn chains(yaml: &str) -> (Arc<Config>, Chains) {
        let registry = Registry::default().with(Probe("high")).with(Probe("low"));
        let options = Options {
            plugins: PluginNames { bundled: true, custom: vec!["high".into(), "low".into()] },
            schemas: Some(Arc::new(registry.clone())),
            filters: None,
        };
        let config = Arc::new(strait_model::load_str_with(yaml, &options).expect("valid config").config);
        let chains =
            Chains::compile(&config, &Plugins::new(registry), &|_| Err("no TLS here".to_owned())).expect("compiles");
        (config, chains)
    }

    fn session(config: &Arc<Config>, route: usize, protocol: Protocol) -> Session {
        let a: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
        Session::new(Facts {
            config: config.clone(),
            client: a,
            server: a,
            listener: Arc::from("test"),
            protocol,
            sni: None,
            alpn: Vec::new(),
            route: Some(RouteIdx(route)),
        })
    }

    const YAML: &str = r#"
_format_version: "3.0"
services:
- name: s1
  url: tcp://127.0.0.1:1
  plugins:
  - {name: low, config: {tag: service}}
  routes:
  - name: r1
    protocols: [tcp, tls]
    destinations: [{port: 1}]
    plugins:
    - {name: low, config: {tag: route}}
    - {name: high, config: {tag: high-route}, protocols: [tls]}
  - name: r2
    protocols: [tcp]
    destinations: [{port: 2}]
  - name: r3
    protocols: [tcp]
    destinations: [{port: 3}]
    plugins:
    - {name: high, config: {tag: disabled}, enabled: false}
plugins:
- {name: high, instance_name: boom, route: r3, service: s1, config: {tag: boom, panic: true}}
- {name: low, config: {tag: global}}
- {name: high, config: {tag: high-global}}
"#;

    #[tokio::test]
    async fn precedence_priority_protocols_and_contained_panics() {
        let (config, chains) = chains(YAML);
        let run = |route: usize, proto: Protocol| {
            let chain = chains.route(RouteIdx(route)).expect("a chain").clone();
            let config = config.clone();
            async move {
                let mut s = session(&config, route, proto);
                let out = chain.preread(&mut s).await;
                (out, s.log_fields().get("ran").cloned().unwrap_or(json!([])))
            }
        };
        // Route beats service beats global; higher priority first; the
        // route's `high` runs only on tls, where it replaces the global one,
        // and does not hide it from tcp sessions.
        assert_eq!(run(0, Protocol::Tcp).await.1, json!(["high-global", "route"]));
        assert_eq!(run(0, Protocol::Tls).await.1, json!(["high-route", "route"]));
        assert_eq!(run(1, Protocol::Tcp).await.1, json!(["high-global", "service"]));
        // A disabled instance is not there; the route+service one panics:
        // that session ends with 500, and the log phase's panics are contained.
        let (out, ran) = run(2, Protocol::Tcp).await;
        assert_eq!(out, PhaseOutcome::Reject { status: Status::InternalError, message: None, plugin: "high" });
        assert_eq!(ran, json!([]));
        let chain = chains.route(RouteIdx(2)).expect("a chain").clone();
        let mut s = session(&config, 2, Protocol::Tcp);
        let client = s.client();
        let record =
            chain.log(&mut s, SessionRecord::new(client, "l".into(), Protocol::Tcp, crate::CloseReason::ClientClosed));
        assert_eq!(record.client, client, "the record comes back for the access log");
        // Global instances alone for sessions without a route.
        let global = chains.global().expect("global chain");
        assert_eq!(global.names().collect::<Vec<_>>(), ["high", "low"]);
    }

    #[test]
    fn a_route_without_plugins_has_no_chain() {
        let (_, chains) = chains(
            "_format_version: \"3.0\"\nservices:\n- url: tcp://127.0.0.1:1\n  routes:\n  - protocols: [tcp]\n    destinations: [{port: 1}]\n",
        );
        assert!(chains.route(RouteIdx(0)).is_none());
        assert!(chains.global().is_none());
    }
}
