//! One instance of a filter's module: its store, the callbacks it exports
//! (looked up once, by name and type; one of the wrong type counts as
//! absent, as in proxy-wasm-cpp-host), and guest calls under the sandbox's
//! bounds — a CPU deadline (epoch interruption) and a memory cap.

use std::sync::{Arc, Weak};

use wasmtime::{Instance, ResourceLimiter, Store, Trap, TypedFunc};

use crate::filter::{FilterInstance, FilterModule};
use crate::host::{Action, Call, Host};
use crate::shared::Shared;

/// A guest call that did not return: the instance is unusable after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure(pub(crate) String);

/// The memory cap was hit (`memory.grow` past `wasm_memory_limit`).
#[derive(Debug, thiserror::Error)]
#[error("the filter's memory would grow to {desired} bytes, past wasm_memory_limit ({limit} bytes)")]
pub(crate) struct MemoryCap {
    desired: usize,
    limit: usize,
}

/// Bounds an instance's memory and tables.
#[derive(Debug)]
pub(crate) struct Limiter {
    pub(crate) memory_limit: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            // An error, not a refusal: `memory.grow` would return -1 and
            // most guests then trap with a less telling message.
            return Err(wasmtime::Error::new(MemoryCap { desired, limit: self.memory_limit }));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The module's callbacks.
struct Exports {
    context_create: Option<TypedFunc<(i32, i32), ()>>,
    vm_start: Option<TypedFunc<(i32, i32), i32>>,
    configure: Option<TypedFunc<(i32, i32), i32>>,
    tick: Option<TypedFunc<i32, ()>>,
    queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    new_connection: Option<TypedFunc<i32, i32>>,
    downstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    upstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    downstream_close: Option<TypedFunc<(i32, i32), ()>>,
    upstream_close: Option<TypedFunc<(i32, i32), ()>>,
    done: Option<TypedFunc<i32, i32>>,
    log: Option<TypedFunc<i32, ()>>,
    delete: Option<TypedFunc<i32, ()>>,
}

/// A live instance.
pub(crate) struct Vm {
    pub(crate) store: Store<Host>,
    x: Exports,
    /// Epoch ticks one guest call may take, and what that is in milliseconds.
    ticks: u64,
    timeout_ms: u128,
    /// The next stream context id (the root is 1).
    next_id: u32,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("host", self.store.data()).finish_non_exhaustive()
    }
}

/// The root context's id in every instance (one configuration each).
pub(crate) const ROOT: u32 = 1;

/// Why a call failed, in words for the log and the session's record.
fn failure(e: wasmtime::Error, timeout_ms: u128) -> Failure {
    if let Some(cap) = e.downcast_ref::<MemoryCap>() {
        return Failure(cap.to_string());
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            return Failure(format!("a call ran longer than wasm_call_timeout ({timeout_ms} ms)"));
        }
        return Failure(format!("trapped: {trap}"));
    }
    // A host function's error (proc_exit), or a trap with context: the
    // first line says what happened.
    let text = e.to_string();
    Failure(text.lines().next().unwrap_or("failed").to_owned())
}

impl Vm {
    /// Instantiates the module for `instance`'s slot `slot`, runs its start
    /// function, and makes its root context with the configuration.
    pub(crate) fn new(
        module: &FilterModule,
        instance: Weak<FilterInstance>,
        shared: &Arc<Shared>,
        slot: usize,
        config: &Arc<[u8]>,
    ) -> Result<Vm, Failure> {
        let sandbox = &module.sandbox;
        let host = Host {
            filter: module.name,
            limiter: Limiter { memory_limit: sandbox.memory_limit },
            shared: shared.clone(),
            instance,
            slot,
            memory: None,
            alloc: None,
            call: Call::default(),
            streams: Default::default(),
            roots: Default::default(),
            scratch: Vec::new(),
        };
        let mut store = Store::new(module.engine(), host);
        store.limiter(|h| &mut h.limiter);
        let timeout_ms = sandbox.call_timeout.as_millis();
        store.set_epoch_deadline(sandbox.ticks);
        let inst: Instance = module.pre.instantiate(&mut store).map_err(|e| failure(e, timeout_ms))?;
        // The memory export: `memory`, or the only one there is.
        let memory = inst.get_memory(&mut store, &module.memory_export);
        let alloc = inst
            .get_typed_func::<i32, i32>(&mut store, "malloc")
            .or_else(|_| inst.get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate"))
            .ok();
        store.data_mut().memory = memory;
        store.data_mut().alloc = alloc;
        let x = Exports {
            context_create: inst.get_typed_func(&mut store, "proxy_on_context_create").ok(),
            vm_start: inst.get_typed_func(&mut store, "proxy_on_vm_start").ok(),
            configure: inst.get_typed_func(&mut store, "proxy_on_configure").ok(),
            tick: inst.get_typed_func(&mut store, "proxy_on_tick").ok(),
            queue_ready: inst.get_typed_func(&mut store, "proxy_on_queue_ready").ok(),
            new_connection: inst.get_typed_func(&mut store, "proxy_on_new_connection").ok(),
            downstream_data: inst.get_typed_func(&mut store, "proxy_on_downstream_data").ok(),
            upstream_data: inst.get_typed_func(&mut store, "proxy_on_upstream_data").ok(),
            downstream_close: inst.get_typed_func(&mut store, "proxy_on_downstream_connection_close").ok(),
            upstream_close: inst.get_typed_func(&mut store, "proxy_on_upstream_connection_close").ok(),
            done: inst.get_typed_func(&mut store, "proxy_on_done").ok(),
            log: inst.get_typed_func(&mut store, "proxy_on_log").ok(),
            delete: inst.get_typed_func(&mut store, "proxy_on_delete").ok(),
        };
        let mut vm = Vm { store, x, ticks: sandbox.ticks, timeout_ms, next_id: ROOT + 1 };
        // A reactor's `_initialize` (then `main` if any), or a command's `_start`.
        let start = |name: &str, vm: &mut Vm| inst.get_typed_func::<(), ()>(&mut vm.store, name).ok();
        if let Some(init) = start("_initialize", &mut vm) {
            vm.guard(|s| init.call(s, ())).map_err(|f| Failure(format!("_initialize {}", f.0)))?;
            if let Ok(main) = inst.get_typed_func::<(i32, i32), i32>(&mut vm.store, "main") {
                vm.guard(|s| main.call(s, (0, 0))).map_err(|f| Failure(format!("main {}", f.0)))?;
            } else if let Ok(main) = inst.get_typed_func::<(), i32>(&mut vm.store, "__main_void") {
                vm.guard(|s| main.call(s, ())).map_err(|f| Failure(format!("__main_void {}", f.0)))?;
            }
        } else if let Some(init) = start("_start", &mut vm) {
            vm.guard(|s| init.call(s, ())).map_err(|f| Failure(format!("_start {}", f.0)))?;
        }
        // The root context, started and configured (Envoy passes the root
        // id to `proxy_on_vm_start`; the Rust SDK needs it).
        vm.store.data_mut().roots.insert(ROOT, crate::host::RootCtx::default());
        vm.begin(ROOT);
        if let Some(f) = vm.x.context_create.clone() {
            vm.guard(|s| f.call(s, (ROOT as i32, 0)))?;
        }
        if let Some(f) = vm.x.vm_start.clone()
            && vm.guard(|s| f.call(s, (ROOT as i32, 0)))? == 0
        {
            return Err(Failure("proxy_on_vm_start returned false".to_owned()));
        }
        if let Some(f) = vm.x.configure.clone() {
            vm.store.data_mut().call.config = Some(config.clone());
            let len = config.len() as i32;
            let ok = vm.guard(|s| f.call(s, (ROOT as i32, len)));
            vm.store.data_mut().call.config = None;
            if ok? == 0 {
                return Err(Failure("the filter refused its configuration (proxy_on_configure returned false)".into()));
            }
        }
        Ok(vm)
    }

    /// Runs a guest call under the deadline.
    fn guard<T>(&mut self, f: impl FnOnce(&mut Store<Host>) -> wasmtime::Result<T>) -> Result<T, Failure> {
        self.store.set_epoch_deadline(self.ticks);
        let ms = self.timeout_ms;
        f(&mut self.store).map_err(|e| failure(e, ms))
    }

    /// A callback for `ctx` begins: host calls act on it.
    pub(crate) fn begin(&mut self, ctx: u32) {
        let call = &mut self.store.data_mut().call;
        call.context = ctx;
        call.effective = ctx;
        call.actions.clear();
    }

    /// What the callback asked for, to carry out now that it returned.
    pub(crate) fn actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.store.data_mut().call.actions)
    }

    /// A new stream context id.
    pub(crate) fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        // Ids are u32 in the ABI; after wrapping, skip 0 and the root.
        self.next_id = match self.next_id.wrapping_add(1) {
            0 | ROOT => ROOT + 1,
            n => n,
        };
        id
    }

    pub(crate) fn context_create(&mut self, ctx: u32) -> Result<(), Failure> {
        match self.x.context_create.clone() {
            Some(f) => self.guard(|s| f.call(s, (ctx as i32, ROOT as i32))),
            None => Ok(()),
        }
    }

    /// `proxy_on_new_connection`: true to pause.
    pub(crate) fn new_connection(&mut self, ctx: u32) -> Result<bool, Failure> {
        match self.x.new_connection.clone() {
            Some(f) => Ok(self.guard(|s| f.call(s, ctx as i32))? != 0),
            None => Ok(false),
        }
    }

    /// `proxy_on_{downstream,upstream}_data`: true to pause. `None` when
    /// the module has no such callback (the bytes go on).
    pub(crate) fn data(&mut self, upstream: bool, ctx: u32, len: usize, eos: bool) -> Result<Option<bool>, Failure> {
        let f = if upstream { self.x.upstream_data.clone() } else { self.x.downstream_data.clone() };
        let Some(f) = f else { return Ok(None) };
        let len = i32::try_from(len).unwrap_or(i32::MAX);
        Ok(Some(self.guard(|s| f.call(s, (ctx as i32, len, i32::from(eos))))? != 0))
    }

    pub(crate) fn connection_close(&mut self, upstream: bool, ctx: u32, peer: i32) -> Result<(), Failure> {
        let f = if upstream { self.x.upstream_close.clone() } else { self.x.downstream_close.clone() };
        match f {
            Some(f) => self.guard(|s| f.call(s, (ctx as i32, peer))),
            None => Ok(()),
        }
    }

    /// `proxy_on_done`; true when the context may be deleted now.
    pub(crate) fn done(&mut self, ctx: u32) -> Result<bool, Failure> {
        match self.x.done.clone() {
            Some(f) => Ok(self.guard(|s| f.call(s, ctx as i32))? != 0),
            None => Ok(true),
        }
    }

    pub(crate) fn log(&mut self, ctx: u32) -> Result<(), Failure> {
        match self.x.log.clone() {
            Some(f) => self.guard(|s| f.call(s, ctx as i32)),
            None => Ok(()),
        }
    }

    pub(crate) fn delete(&mut self, ctx: u32) -> Result<(), Failure> {
        match self.x.delete.clone() {
            Some(f) => self.guard(|s| f.call(s, ctx as i32)),
            None => Ok(()),
        }
    }

    pub(crate) fn tick(&mut self) -> Result<(), Failure> {
        match self.x.tick.clone() {
            Some(f) => self.guard(|s| f.call(s, ROOT as i32)),
            None => Ok(()),
        }
    }

    pub(crate) fn queue_ready(&mut self, queue: u32) -> Result<(), Failure> {
        match self.x.queue_ready.clone() {
            Some(f) => self.guard(|s| f.call(s, (ROOT as i32, queue as i32))),
            None => Ok(()),
        }
    }
}
