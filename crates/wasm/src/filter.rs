//! A configured filter at run time: one [`FilterInstance`] per filter and
//! configuration, with one instance of the module (a [`Vm`]) per worker,
//! each holding the root context of that configuration. Sessions are
//! spread over the instances; a session's context lives in one of them for
//! its whole life.
//!
//! One configuration per instance, rather than several root contexts in
//! one, because some SDKs (AssemblyScript's) keep a single root context per
//! module. Identical configurations share an instance (see `lib.rs`).
//!
//! The sandbox: every guest call runs under the deadline and the memory
//! cap (`vm.rs`). A call that traps or overruns takes its instance down:
//! the sessions it served end with status 500 and a reason naming the
//! filter, the instance is rebuilt (at most once a second), and the failure
//! is logged (at most once per [`LOG_EVERY`], with how many were not).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use strait_plugin::{Data, DataVerdict, Direction, Instance, Resume, Session, Status, Verdict};
use wasmtime::{Engine, InstancePre};

use crate::abi::{AbiVersion, buffer, peer};
use crate::host::{Action, Host, Link, StreamCtx};
use crate::props::Props;
use crate::shared::{Owner, Shared};
use crate::vm::{Failure, ROOT, Vm};

/// An instance that failed is rebuilt at most this often.
const REBUILD_EVERY: Duration = Duration::from_secs(1);
/// A filter's failures are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The bounds of every guest call.
#[derive(Debug, Clone)]
pub(crate) struct Sandbox {
    pub(crate) call_timeout: Duration,
    /// The deadline in epoch ticks.
    pub(crate) ticks: u64,
    pub(crate) memory_limit: usize,
}

/// A filter's compiled, checked module.
pub(crate) struct FilterModule {
    pub(crate) name: &'static str,
    pub(crate) abi: AbiVersion,
    pub(crate) pre: InstancePre<Host>,
    /// The name of its memory export.
    pub(crate) memory_export: String,
    pub(crate) sandbox: Sandbox,
    pub(crate) engine: Engine,
}

impl std::fmt::Debug for FilterModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterModule").field("name", &self.name).field("abi", &self.abi).finish_non_exhaustive()
    }
}

impl FilterModule {
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// One of a configured filter's instances.
#[derive(Debug, Default)]
struct Slot {
    vm: Option<Vm>,
    /// Bumped with every instance built, so a session whose context died
    /// with an earlier one knows.
    generation: u64,
    built_at: Option<Instant>,
    /// Why the last instance failed, while there is none.
    failed: Option<String>,
}

/// Failures logged, and those not (within [`LOG_EVERY`]).
#[derive(Debug, Default)]
struct FailLog {
    last: Option<Instant>,
    suppressed: u64,
}

/// A filter with one configuration, as a kit [`Instance`].
pub(crate) struct FilterInstance {
    module: Arc<FilterModule>,
    shared: Arc<Shared>,
    config: Arc<[u8]>,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    failures: Mutex<FailLog>,
    me: Weak<FilterInstance>,
}

impl std::fmt::Debug for FilterInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterInstance").field("filter", &self.module.name).finish_non_exhaustive()
    }
}

/// A session's place in one filter: which instance, which context.
#[derive(Debug, Clone)]
struct Joined {
    /// The [`FilterInstance`] (its address).
    key: usize,
    slot: usize,
    generation: u64,
    ctx: u32,
    /// The client ended its side (the close callback says "remote").
    client_closed: bool,
}

/// A session's Wasm state, in its plugin context.
#[derive(Debug, Default)]
struct WasmSession {
    connection_id: u64,
    joined: Vec<Joined>,
}

/// Envoy's `connection.id`: one per session, for every filter it meets.
fn next_connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What the callback's own context asked for.
#[derive(Debug, Default)]
struct Own {
    close: bool,
    continued: bool,
}

fn lock(m: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FilterInstance {
    /// Builds `workers` instances of `module` with `config`; an error is the
    /// filter refusing the configuration or failing to start.
    pub(crate) fn new(
        module: Arc<FilterModule>,
        shared: Arc<Shared>,
        config: Arc<[u8]>,
        workers: usize,
    ) -> Result<Arc<FilterInstance>, String> {
        let inst = Arc::new_cyclic(|me| FilterInstance {
            module,
            shared,
            config,
            slots: (0..workers.max(1)).map(|_| Mutex::new(Slot::default())).collect(),
            next: AtomicUsize::new(0),
            failures: Mutex::new(FailLog::default()),
            me: me.clone(),
        });
        for i in 0..inst.slots.len() {
            let mut slot = lock(&inst.slots[i]);
            inst.ready(i, &mut slot)?;
        }
        Ok(inst)
    }

    fn name(&self) -> &'static str {
        self.module.name
    }

    fn key(&self) -> usize {
        self as *const FilterInstance as usize
    }

    /// The slot's instance, built (again) if it has none and may.
    fn ready<'a>(&self, i: usize, slot: &'a mut Slot) -> Result<&'a mut Vm, String> {
        if slot.vm.is_none() {
            if let (Some(reason), Some(at)) = (&slot.failed, slot.built_at)
                && at.elapsed() < REBUILD_EVERY
            {
                return Err(format!("its instance failed ({reason}) and is rebuilt at most once a second"));
            }
            slot.built_at = Some(Instant::now());
            match Vm::new(&self.module, self.me.clone(), &self.shared, i, &self.config) {
                Ok(mut vm) => {
                    slot.generation += 1;
                    slot.failed = None;
                    let actions = vm.actions();
                    slot.vm = Some(vm);
                    self.apply(i, slot, actions, None);
                }
                Err(f) => {
                    self.log_failure(&f);
                    slot.failed = Some(f.0.clone());
                    return Err(f.0);
                }
            }
        }
        match slot.vm.as_mut() {
            Some(vm) => Ok(vm),
            None => Err("no instance".to_owned()),
        }
    }

    /// A slot for a new session: the next one that has (or may build) an
    /// instance.
    fn pick(&self) -> (usize, MutexGuard<'_, Slot>) {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let i = (start + k) % n;
            let g = lock(&self.slots[i]);
            let usable = g.vm.is_some() || g.built_at.is_none_or(|t| t.elapsed() >= REBUILD_EVERY);
            if usable {
                return (i, g);
            }
        }
        let i = start % n;
        (i, lock(&self.slots[i]))
    }

    fn log_failure(&self, f: &Failure) {
        let mut log = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if log.last.is_some_and(|t| t.elapsed() < LOG_EVERY) {
            log.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut log.suppressed);
        log.last = Some(Instant::now());
        tracing::error!(
            filter = self.name(),
            reason = %f.0,
            not_logged_since_last = suppressed,
            "a Wasm filter's instance failed: the sessions it served are closed (500) and it is rebuilt"
        );
    }

    /// An instance failed: its sessions end with 500, it is dropped, and
    /// rebuilt now unless it was built under a second ago.
    fn fail(&self, i: usize, slot: &mut Slot, f: Failure) {
        self.log_failure(&f);
        let reason = format!("filter '{}': {}", self.name(), f.0);
        if let Some(vm) = slot.vm.take() {
            for s in vm.store.data().streams.values() {
                match &s.link {
                    Link::Relaying(c) => c.fail(self.name(), f.0.clone()),
                    Link::Connecting(r) => r.refuse(Status::InternalError, Some(reason.clone())),
                    Link::Idle => {}
                }
            }
        }
        slot.failed = Some(f.0);
        let _ = self.ready(i, slot);
    }

    /// Carries out what a callback asked for; gives what its own context
    /// (`current`) asked.
    fn apply(&self, i: usize, slot: &mut Slot, actions: Vec<Action>, current: Option<u32>) -> Own {
        let mut own = Own::default();
        let generation = slot.generation;
        let Some(vm) = slot.vm.as_mut() else { return own };
        for a in actions {
            match a {
                Action::Continue(ctx, d) => {
                    if current == Some(ctx) && d == Direction::Downstream {
                        own.continued = true;
                    }
                    match vm.store.data().streams.get(&ctx).map(|s| &s.link) {
                        Some(Link::Connecting(r)) if d == Direction::Downstream => r.resume(),
                        Some(Link::Relaying(c)) => c.resume(d),
                        _ => {}
                    }
                }
                Action::Close(ctx) if current == Some(ctx) => own.close = true,
                Action::Close(ctx) => match vm.store.data().streams.get(&ctx).map(|s| &s.link) {
                    Some(Link::Connecting(r)) => {
                        r.refuse(Status::Forbidden, Some("the filter closed the connection".to_owned()))
                    }
                    Some(Link::Relaying(c)) => c.close(self.name()),
                    _ => {}
                },
                Action::Tick(_, ms) => {
                    let Some(root) = vm.store.data_mut().roots.get_mut(&ROOT) else { continue };
                    if root.tick_ms == Some(ms) {
                        // The running ticker already has this period: no
                        // second one (a filter may set it on every call).
                        continue;
                    }
                    root.tick_ms = Some(ms);
                    root.tick_token += 1;
                    let token = root.tick_token;
                    if ms > 0
                        && let Ok(rt) = tokio::runtime::Handle::try_current()
                    {
                        let period = Duration::from_millis(u64::from(ms));
                        rt.spawn(ticker(self.me.clone(), i, generation, token, period));
                    }
                }
            }
        }
        own
    }

    /// A tick of the root context; false once the ticker should stop.
    fn tick(&self, i: usize, generation: u64, token: u64) -> bool {
        let mut slot = lock(&self.slots[i]);
        if slot.generation != generation {
            return false;
        }
        let Some(vm) = slot.vm.as_mut() else { return false };
        if vm.store.data().roots.get(&ROOT).is_none_or(|r| r.tick_token != token) {
            return false;
        }
        vm.begin(ROOT);
        let r = vm.tick();
        let actions = vm.actions();
        match r {
            Ok(()) => {
                self.apply(i, &mut slot, actions, None);
                true
            }
            Err(f) => {
                self.fail(i, &mut slot, f);
                false
            }
        }
    }

    /// A queue this instance's root registered has items.
    fn queue_ready(&self, i: usize, queue: u32) {
        let mut slot = lock(&self.slots[i]);
        let Some(vm) = slot.vm.as_mut() else { return };
        vm.begin(ROOT);
        let r = vm.queue_ready(queue);
        let actions = vm.actions();
        match r {
            Ok(()) => {
                self.apply(i, &mut slot, actions, None);
            }
            Err(f) => self.fail(i, &mut slot, f),
        }
    }

    /// The session's place in this filter, if it joined.
    fn joined(&self, s: &mut Session) -> Option<Joined> {
        let key = self.key();
        s.ctx().get::<WasmSession>()?.joined.iter().find(|j| j.key == key).cloned()
    }

    /// The session's context joined an instance that has since failed.
    fn gone(&self, s: &mut Session) -> DataVerdict {
        if let Some(c) = s.stream_control() {
            c.fail(self.name(), "its instance failed and was rebuilt");
        }
        DataVerdict::Close
    }

    fn data(&self, s: &mut Session, d: &mut Data<'_>, upstream: bool) -> DataVerdict {
        let Some(j) = self.joined(s) else { return DataVerdict::Continue };
        let mut slot = lock(&self.slots[j.slot]);
        if slot.generation != j.generation {
            drop(slot);
            return self.gone(s);
        }
        let Some(vm) = slot.vm.as_mut() else {
            drop(slot);
            return self.gone(s);
        };
        let kind = if upstream { buffer::UPSTREAM_DATA } else { buffer::DOWNSTREAM_DATA };
        let eos = d.end_of_stream();
        let bytes = std::mem::take(d.as_mut_vec());
        let len = bytes.len();
        vm.store.data_mut().call.data = Some((kind, bytes));
        vm.begin(j.ctx);
        let r = vm.data(upstream, j.ctx, len, eos);
        if let Some((_, bytes)) = vm.store.data_mut().call.data.take() {
            *d.as_mut_vec() = bytes;
        }
        let actions = vm.actions();
        match r {
            Err(f) => {
                // Fails every session of the instance, this one too.
                self.fail(j.slot, &mut slot, f);
                DataVerdict::Close
            }
            Ok(paused) => {
                let own = self.apply(j.slot, &mut slot, actions, Some(j.ctx));
                match (own.close, paused) {
                    (true, _) => DataVerdict::Close,
                    (false, Some(true)) => DataVerdict::Pause,
                    _ => DataVerdict::Continue,
                }
            }
        }
    }
}

async fn ticker(inst: Weak<FilterInstance>, slot: usize, generation: u64, token: u64, period: Duration) {
    loop {
        // Re-armed when the tick returns, as Envoy does.
        tokio::time::sleep(period).await;
        let Some(inst) = inst.upgrade() else { return };
        if !inst.tick(slot, generation, token) {
            return;
        }
    }
}

/// Tells a queue's owner it has items, from the runtime (never inside the
/// guest call that enqueued).
pub(crate) fn notify_queue(owner: Owner, queue: u32) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            if let Some(inst) = owner.instance.upgrade() {
                inst.queue_ready(owner.slot, queue);
            }
        });
    }
}

impl Instance for FilterInstance {
    fn data_phase(&self) -> bool {
        true
    }

    /// The session's context: `proxy_on_context_create`, then
    /// `proxy_on_new_connection` (a pause holds the session before its
    /// upstream is connected, until the filter continues it).
    fn preread(&self, s: &mut Session) -> Verdict {
        let connection_id = {
            let w = s.ctx().get_or_default::<WasmSession>();
            if w.connection_id == 0 {
                w.connection_id = next_connection_id();
            }
            w.connection_id
        };
        let props = Props::of(s, connection_id);
        let (i, mut slot) = self.pick();
        let vm = match self.ready(i, &mut slot) {
            Ok(vm) => vm,
            Err(reason) => return Verdict::reject(Status::InternalError, Some(reason)),
        };
        let ctx = vm.next_id();
        vm.store
            .data_mut()
            .streams
            .insert(ctx, StreamCtx { root: ROOT, props, own_props: Vec::new(), link: Link::Idle });
        vm.begin(ctx);
        let r = vm.context_create(ctx).and_then(|()| vm.new_connection(ctx));
        let actions = vm.actions();
        let paused = match r {
            Ok(paused) => paused,
            Err(f) => {
                let reason = f.0.clone();
                self.fail(i, &mut slot, f);
                return Verdict::reject(Status::InternalError, Some(reason));
            }
        };
        let generation = slot.generation;
        s.ctx().get_or_default::<WasmSession>().joined.push(Joined {
            key: self.key(),
            slot: i,
            generation,
            ctx,
            client_closed: false,
        });
        let own = self.apply(i, &mut slot, actions, Some(ctx));
        if own.close {
            return Verdict::reject(Status::Forbidden, Some("the filter closed the connection".to_owned()));
        }
        if paused && !own.continued {
            let resume = Resume::new();
            if let Some(st) = slot.vm.as_mut().and_then(|vm| vm.store.data_mut().streams.get_mut(&ctx)) {
                st.link = Link::Connecting(resume.clone());
            }
            return Verdict::Wait(resume);
        }
        Verdict::Continue
    }

    /// Relaying from now on: the context reaches the session through its
    /// stream control, and knows its upstream.
    fn on_connect(&self, s: &mut Session) -> Verdict {
        let Some(j) = self.joined(s) else { return Verdict::Continue };
        let (control, upstream) = (s.stream_control().cloned(), s.upstream());
        let mut slot = lock(&self.slots[j.slot]);
        if slot.generation == j.generation
            && let Some(st) = slot.vm.as_mut().and_then(|vm| vm.store.data_mut().streams.get_mut(&j.ctx))
        {
            st.props.upstream = upstream;
            st.link = control.map_or(Link::Idle, Link::Relaying);
        }
        Verdict::Continue
    }

    fn on_downstream_data(&self, s: &mut Session, data: &mut Data<'_>) -> DataVerdict {
        self.data(s, data, false)
    }

    fn on_upstream_data(&self, s: &mut Session, data: &mut Data<'_>) -> DataVerdict {
        self.data(s, data, true)
    }

    /// Remembered for the downstream close callback, which Envoy sends
    /// when the connection closes (in `log`).
    fn on_downstream_close(&self, s: &mut Session) {
        let key = self.key();
        if let Some(w) = s.ctx().get_mut::<WasmSession>()
            && let Some(j) = w.joined.iter_mut().find(|j| j.key == key)
        {
            j.client_closed = true;
        }
    }

    /// `proxy_on_upstream_connection_close` (peer unknown, as Envoy sends it).
    fn on_upstream_close(&self, s: &mut Session) {
        let Some(j) = self.joined(s) else { return };
        let mut slot = lock(&self.slots[j.slot]);
        if slot.generation != j.generation {
            return;
        }
        let Some(vm) = slot.vm.as_mut() else { return };
        vm.begin(j.ctx);
        let r = vm.connection_close(true, j.ctx, peer::UNKNOWN);
        let actions = vm.actions();
        match r {
            Ok(()) => {
                self.apply(j.slot, &mut slot, actions, Some(j.ctx));
            }
            Err(f) => self.fail(j.slot, &mut slot, f),
        }
    }

    /// The session ended: the downstream close callback, then
    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`.
    fn log(&self, s: &mut Session) {
        let key = self.key();
        let Some(j) = s.ctx().get_mut::<WasmSession>().and_then(|w| {
            let at = w.joined.iter().position(|j| j.key == key)?;
            Some(w.joined.remove(at))
        }) else {
            return;
        };
        let mut slot = lock(&self.slots[j.slot]);
        if slot.generation != j.generation {
            return;
        }
        let Some(vm) = slot.vm.as_mut() else { return };
        vm.begin(j.ctx);
        let who = if j.client_closed { peer::REMOTE } else { peer::LOCAL };
        let r = vm
            .connection_close(false, j.ctx, who)
            .and_then(|()| vm.done(j.ctx))
            .and_then(|_| vm.log(j.ctx))
            .and_then(|()| vm.delete(j.ctx));
        vm.store.data_mut().streams.remove(&j.ctx);
        let actions = vm.actions();
        match r {
            Ok(()) => {
                self.apply(j.slot, &mut slot, actions, Some(j.ctx));
            }
            Err(f) => self.fail(j.slot, &mut slot, f),
        }
    }
}

impl Drop for FilterInstance {
    /// The configuration is gone: each instance's root context is done.
    fn drop(&mut self) {
        for m in &self.slots {
            let mut slot = lock(m);
            let Some(vm) = slot.vm.as_mut() else { continue };
            vm.begin(ROOT);
            if let Ok(true) = vm.done(ROOT) {
                let _ = vm.delete(ROOT);
            }
        }
    }
}
