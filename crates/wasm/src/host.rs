//! What a filter's instance can reach: its store's state ([`Host`]), the
//! guest-memory helpers every host function uses, and the `env.proxy_*`
//! functions of the ABI, linked once per engine ([`Imports`]).
//!
//! Host functions never call back into the guest except to allocate the
//! bytes they return (the module's `malloc` or `proxy_on_memory_allocate`).
//! Stream control, timers and `proxy_done` are recorded as [`Action`]s and
//! carried out when the guest call returns, as Envoy defers them; queue
//! notifications are posted to the runtime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use strait_plugin::{Direction, Resume, StreamControl};
use wasmtime::{Caller, Engine, IntoFunc, Linker, Memory, TypedFunc};

use crate::abi::{MetricType, buffer, status, stream};
use crate::filter::FilterInstance;
use crate::props::{self, Props};
use crate::shared::{Owner, Shared};
use crate::vm::Limiter;

/// The largest a data buffer may grow to through `proxy_set_buffer_bytes`.
const MAX_BUFFER: usize = 16 * 1024 * 1024;
/// The most properties a session's filter may set, and the largest value.
const MAX_PROPERTIES: usize = 64;
const MAX_PROPERTY: usize = 64 * 1024;

/// A stream context's way back to its session.
#[derive(Debug)]
pub(crate) enum Link {
    /// Paused in `proxy_on_new_connection`: resumed (or refused) through this.
    Connecting(Resume),
    /// Relaying: held bytes resumed, or the session closed, through this.
    Relaying(StreamControl),
    /// Neither (between the two, or after the relay).
    Idle,
}

/// A session's context in this instance.
#[derive(Debug)]
pub(crate) struct StreamCtx {
    pub(crate) root: u32,
    pub(crate) props: Props,
    /// Properties the filter set (`proxy_set_property`).
    pub(crate) own_props: Vec<(String, Vec<u8>)>,
    pub(crate) link: Link,
}

/// A root context: the filter's configuration in this instance.
#[derive(Debug, Default)]
pub(crate) struct RootCtx {
    /// Bumped whenever the tick period changes, so an older ticker stops.
    pub(crate) tick_token: u64,
    /// The period the running ticker has.
    pub(crate) tick_ms: Option<u32>,
}

/// What a host function asked for, carried out when the guest call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// `proxy_continue_stream` for this context.
    Continue(u32, Direction),
    /// `proxy_close_stream` for this context.
    Close(u32),
    /// `proxy_set_tick_period_milliseconds` of this root (0: stop).
    Tick(u32, u32),
}

/// The state of the guest call under way.
#[derive(Debug, Default)]
pub(crate) struct Call {
    /// The callback's context, and the one host calls act on
    /// (`proxy_set_effective_context` changes it until the call returns).
    pub(crate) context: u32,
    pub(crate) effective: u32,
    /// `DOWNSTREAM_DATA` or `UPSTREAM_DATA` during a data callback: the
    /// bytes the filter sees and may edit.
    pub(crate) data: Option<(i32, Vec<u8>)>,
    /// `PLUGIN_CONFIGURATION` during `proxy_on_configure`.
    pub(crate) config: Option<Arc<[u8]>>,
    pub(crate) actions: Vec<Action>,
}

/// A store's state: one instance of one filter.
pub(crate) struct Host {
    pub(crate) filter: &'static str,
    pub(crate) limiter: Limiter,
    pub(crate) shared: Arc<Shared>,
    /// The configured filter this instance runs, for queue notifications.
    pub(crate) instance: Weak<FilterInstance>,
    /// Which of the filter's instances this is.
    pub(crate) slot: usize,
    pub(crate) memory: Option<Memory>,
    pub(crate) alloc: Option<TypedFunc<i32, i32>>,
    pub(crate) call: Call,
    pub(crate) streams: HashMap<u32, StreamCtx>,
    pub(crate) roots: HashMap<u32, RootCtx>,
    /// Reused for bytes copied into the guest.
    pub(crate) scratch: Vec<u8>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("filter", &self.filter).field("slot", &self.slot).finish_non_exhaustive()
    }
}

impl Host {
    /// The root context the effective context belongs to (itself for a root).
    pub(crate) fn effective_root(&self) -> Option<u32> {
        let ctx = self.call.effective;
        if self.roots.contains_key(&ctx) {
            return Some(ctx);
        }
        self.streams.get(&ctx).map(|s| s.root)
    }
}

type C<'a> = Caller<'a, Host>;

/// The `[ptr, ptr + len)` range of guest memory, if it is inside it.
pub(crate) fn range(mem: &[u8], ptr: i32, len: i32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as u32 as usize)?;
    (end <= mem.len()).then_some(start..end)
}

/// A copy of guest bytes (keys, names, paths: small).
pub(crate) fn read(c: &mut C<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let memory = c.data().memory?;
    let mem = memory.data(&*c);
    range(mem, ptr, len).map(|r| mem[r].to_vec())
}

/// Writes little-endian bytes at `ptr`; false when out of bounds.
pub(crate) fn write(c: &mut C<'_>, ptr: i32, bytes: &[u8]) -> bool {
    let Some(memory) = c.data().memory else { return false };
    let mem = memory.data_mut(&mut *c);
    match range(mem, ptr, bytes.len() as i32) {
        Some(r) => {
            mem[r].copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// Hands `bytes` to the guest: allocated with its allocator, copied in,
/// and the address and size written at `ptr_out` and `size_out` (0 and 0,
/// with no allocation, when empty). A trap in the allocator is the guest's.
pub(crate) fn give(c: &mut C<'_>, bytes: &[u8], ptr_out: i32, size_out: i32) -> wasmtime::Result<i32> {
    if bytes.is_empty() {
        let ok = write(c, ptr_out, &0u32.to_le_bytes()) && write(c, size_out, &0u32.to_le_bytes());
        return Ok(if ok { status::OK } else { status::INVALID_MEMORY_ACCESS });
    }
    let Some(alloc) = c.data().alloc.clone() else { return Ok(status::INVALID_MEMORY_ACCESS) };
    let Ok(len) = i32::try_from(bytes.len()) else { return Ok(status::BAD_ARGUMENT) };
    let addr = alloc.call(&mut *c, len)?;
    if addr == 0 || !write(c, addr, bytes) {
        return Ok(status::INVALID_MEMORY_ACCESS);
    }
    let ok = write(c, ptr_out, &(addr as u32).to_le_bytes()) && write(c, size_out, &(len as u32).to_le_bytes());
    Ok(if ok { status::OK } else { status::INVALID_MEMORY_ACCESS })
}

/// [`give`] for bytes the host state holds: copied through the scratch buffer.
fn give_from(
    c: &mut C<'_>,
    pick: impl FnOnce(&Host, &mut Vec<u8>),
    ptr_out: i32,
    size_out: i32,
) -> wasmtime::Result<i32> {
    let mut scratch = std::mem::take(&mut c.data_mut().scratch);
    scratch.clear();
    pick(c.data(), &mut scratch);
    let r = give(c, &scratch, ptr_out, size_out);
    scratch.clear();
    c.data_mut().scratch = scratch;
    r
}

/// The host functions, linked once per engine, and the names they answer to
/// (a module importing any other is refused when it is checked).
pub(crate) struct Imports {
    pub(crate) linker: Linker<Host>,
    names: HashSet<(&'static str, &'static str)>,
}

impl std::fmt::Debug for Imports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imports").field("names", &self.names.len()).finish()
    }
}

impl Imports {
    pub(crate) fn new(engine: &Engine) -> wasmtime::Result<Imports> {
        let mut i = Imports { linker: Linker::new(engine), names: HashSet::new() };
        i.proxy()?;
        i.http_stubs()?;
        crate::wasi::link(&mut i, "wasi_snapshot_preview1")?;
        crate::wasi::link(&mut i, "wasi_unstable")?;
        Ok(i)
    }

    /// Whether `module.name` is a host function.
    pub(crate) fn defines(&self, module: &str, name: &str) -> bool {
        self.names.iter().any(|(m, n)| *m == module && *n == name)
    }

    pub(crate) fn wrap<Params, Args>(
        &mut self,
        module: &'static str,
        name: &'static str,
        f: impl IntoFunc<Host, Params, Args>,
    ) -> wasmtime::Result<()> {
        self.names.insert((module, name));
        self.linker.func_wrap(module, name, f)?;
        Ok(())
    }

    /// The ABI's functions for network filters.
    fn proxy(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        self.wrap(ENV, "proxy_log", |mut c: C<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            let Some(msg) = read(&mut c, ptr, len) else { return status::INVALID_MEMORY_ACCESS };
            let msg = String::from_utf8_lossy(&msg);
            let filter = c.data().filter;
            match level {
                0 => tracing::trace!(filter, "{msg}"),
                1 => tracing::debug!(filter, "{msg}"),
                2 => tracing::info!(filter, "{msg}"),
                3 => tracing::warn!(filter, "{msg}"),
                4 | 5 => tracing::error!(filter, "{msg}"),
                _ => return status::BAD_ARGUMENT,
            }
            status::OK
        })?;
        self.wrap(ENV, "proxy_get_log_level", |mut c: C<'_>, ptr: i32| -> i32 {
            use tracing::level_filters::LevelFilter;
            let level: u32 = match LevelFilter::current() {
                LevelFilter::TRACE => 0,
                LevelFilter::DEBUG => 1,
                LevelFilter::INFO => 2,
                LevelFilter::WARN => 3,
                _ => 4,
            };
            if write(&mut c, ptr, &level.to_le_bytes()) { status::OK } else { status::INVALID_MEMORY_ACCESS }
        })?;
        self.buffers()?;
        self.properties()?;
        self.control()?;
        self.shared_data()?;
        self.queues()?;
        self.metrics()?;
        Ok(())
    }

    fn buffers(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        self.wrap(
            ENV,
            "proxy_get_buffer_bytes",
            |mut c: C<'_>, kind: i32, start: i32, max: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
                if !(0..=buffer::MAX).contains(&kind) {
                    return Ok(status::BAD_ARGUMENT);
                }
                let (start, max) = (start as u32 as usize, max as u32 as usize);
                let cut = |all: &[u8], out: &mut Vec<u8>| {
                    let from = start.min(all.len());
                    let to = from.saturating_add(max).min(all.len());
                    out.extend_from_slice(&all[from..to]);
                };
                let configuring = c.data().call.config.is_some();
                match kind {
                    buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA => give_from(
                        &mut c,
                        |h, out| {
                            if let Some((k, bytes)) = &h.call.data
                                && *k == kind
                            {
                                cut(bytes, out);
                            }
                        },
                        ptr_out,
                        size_out,
                    ),
                    buffer::PLUGIN_CONFIGURATION if configuring => give_from(
                        &mut c,
                        |h, out| {
                            if let Some(cfg) = &h.call.config {
                                cut(cfg, out);
                            }
                        },
                        ptr_out,
                        size_out,
                    ),
                    // Strait gives filters no VM configuration: it is empty.
                    buffer::VM_CONFIGURATION => give(&mut c, &[], ptr_out, size_out),
                    _ => Ok(status::NOT_FOUND),
                }
            },
        )?;
        self.wrap(
            ENV,
            "proxy_set_buffer_bytes",
            |mut c: C<'_>, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
                if !(0..=buffer::MAX).contains(&kind) {
                    return status::BAD_ARGUMENT;
                }
                let Some(bytes) = read(&mut c, ptr, len) else { return status::INVALID_MEMORY_ACCESS };
                let h = c.data_mut();
                let Some((_, data)) = h.call.data.as_mut().filter(|(k, _)| *k == kind) else {
                    return status::BAD_ARGUMENT;
                };
                let (start, size) = (start as u32 as usize, size as u32 as usize);
                if data.len().saturating_add(bytes.len()) > MAX_BUFFER {
                    // A filter may not grow a buffer without bound within a call.
                    return status::BAD_ARGUMENT;
                }
                // Envoy's edits: replace a prefix (prepend when `size` is 0),
                // or append at or past the end; nothing in the middle.
                if start == 0 {
                    let n = size.min(data.len());
                    data.splice(..n, bytes);
                } else if start >= data.len() {
                    data.extend_from_slice(&bytes);
                } else {
                    return status::BAD_ARGUMENT;
                }
                status::OK
            },
        )?;
        self.wrap(ENV, "proxy_get_buffer_status", |mut c: C<'_>, kind: i32, len_out: i32, flags_out: i32| -> i32 {
            if !(0..=buffer::MAX).contains(&kind) {
                return status::BAD_ARGUMENT;
            }
            let h = c.data();
            let len = match kind {
                buffer::DOWNSTREAM_DATA | buffer::UPSTREAM_DATA => {
                    h.call.data.as_ref().filter(|(k, _)| *k == kind).map_or(0, |(_, d)| d.len())
                }
                buffer::PLUGIN_CONFIGURATION => match &h.call.config {
                    Some(cfg) => cfg.len(),
                    None => return status::NOT_FOUND,
                },
                buffer::VM_CONFIGURATION => 0,
                _ => return status::NOT_FOUND,
            };
            let ok =
                write(&mut c, len_out, &(len as u32).to_le_bytes()) && write(&mut c, flags_out, &0u32.to_le_bytes());
            if ok { status::OK } else { status::INVALID_MEMORY_ACCESS }
        })?;
        Ok(())
    }

    fn properties(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        self.wrap(
            ENV,
            "proxy_get_property",
            |mut c: C<'_>, ptr: i32, len: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
                let Some(raw) = read(&mut c, ptr, len) else { return Ok(status::INVALID_MEMORY_ACCESS) };
                let path = props::normalize(&raw);
                let mut found = false;
                let r = give_from(
                    &mut c,
                    |h, out| {
                        found = props::lookup(h, &path, out);
                    },
                    ptr_out,
                    size_out,
                )?;
                Ok(if found { r } else { status::NOT_FOUND })
            },
        )?;
        self.wrap(ENV, "proxy_set_property", |mut c: C<'_>, ptr: i32, len: i32, vptr: i32, vlen: i32| -> i32 {
            let (Some(raw), Some(value)) = (read(&mut c, ptr, len), read(&mut c, vptr, vlen)) else {
                return status::INVALID_MEMORY_ACCESS;
            };
            let path = props::normalize(&raw);
            let h = c.data_mut();
            let ctx = h.call.effective;
            let Some(s) = h.streams.get_mut(&ctx) else { return status::NOT_FOUND };
            if value.len() > MAX_PROPERTY {
                return status::BAD_ARGUMENT;
            }
            let full = s.own_props.len() >= MAX_PROPERTIES;
            match s.own_props.iter_mut().find(|(k, _)| *k == path) {
                Some((_, v)) => *v = value,
                None if full => return status::BAD_ARGUMENT,
                None => s.own_props.push((path, value)),
            }
            status::OK
        })?;
        Ok(())
    }

    fn control(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        fn direction(kind: i32) -> Option<Direction> {
            match kind {
                stream::DOWNSTREAM => Some(Direction::Downstream),
                stream::UPSTREAM => Some(Direction::Upstream),
                _ => None,
            }
        }
        self.wrap(ENV, "proxy_continue_stream", |mut c: C<'_>, kind: i32| -> i32 {
            if !(0..=stream::MAX).contains(&kind) {
                return status::BAD_ARGUMENT;
            }
            // HTTP streams on a network filter: nothing to continue.
            if let Some(d) = direction(kind) {
                let h = c.data_mut();
                let ctx = h.call.effective;
                h.call.actions.push(Action::Continue(ctx, d));
            }
            status::OK
        })?;
        self.wrap(ENV, "proxy_close_stream", |mut c: C<'_>, kind: i32| -> i32 {
            if !(0..=stream::MAX).contains(&kind) {
                return status::BAD_ARGUMENT;
            }
            // Either side: the session ends (Envoy closes the downstream
            // connection for both, and the upstream goes with it).
            if direction(kind).is_some() {
                let h = c.data_mut();
                let ctx = h.call.effective;
                h.call.actions.push(Action::Close(ctx));
            }
            status::OK
        })?;
        self.wrap(ENV, "proxy_get_current_time_nanoseconds", |mut c: C<'_>, ptr: i32| -> i32 {
            let ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
            if write(&mut c, ptr, &ns.to_le_bytes()) { status::OK } else { status::INVALID_MEMORY_ACCESS }
        })?;
        self.wrap(ENV, "proxy_set_tick_period_milliseconds", |mut c: C<'_>, ms: i32| -> i32 {
            let h = c.data_mut();
            if let Some(root) = h.effective_root() {
                h.call.actions.push(Action::Tick(root, ms as u32));
            }
            status::OK
        })?;
        // A root context is done when its configuration goes, and its
        // instance with it: there is never a deletion to wait for.
        self.wrap(ENV, "proxy_done", |_: C<'_>| -> i32 { status::NOT_FOUND })?;
        self.wrap(ENV, "proxy_set_effective_context", |mut c: C<'_>, ctx: i32| -> i32 {
            let h = c.data_mut();
            let ctx = ctx as u32;
            if h.streams.contains_key(&ctx) || h.roots.contains_key(&ctx) {
                h.call.effective = ctx;
                status::OK
            } else {
                status::BAD_ARGUMENT
            }
        })?;
        self.wrap(
            ENV,
            "proxy_call_foreign_function",
            |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| -> i32 { status::NOT_FOUND },
        )?;
        Ok(())
    }

    fn shared_data(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        self.wrap(
            ENV,
            "proxy_get_shared_data",
            |mut c: C<'_>, kptr: i32, klen: i32, ptr_out: i32, size_out: i32, cas_out: i32| -> wasmtime::Result<i32> {
                let Some(key) = read(&mut c, kptr, klen) else { return Ok(status::INVALID_MEMORY_ACCESS) };
                let Some((value, cas)) = c.data().shared.kv.get(&key) else { return Ok(status::NOT_FOUND) };
                let r = give(&mut c, &value, ptr_out, size_out)?;
                if r != status::OK {
                    return Ok(r);
                }
                Ok(if write(&mut c, cas_out, &cas.to_le_bytes()) { status::OK } else { status::INVALID_MEMORY_ACCESS })
            },
        )?;
        self.wrap(
            ENV,
            "proxy_set_shared_data",
            |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> i32 {
                let (Some(key), Some(value)) = (read(&mut c, kptr, klen), read(&mut c, vptr, vlen)) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                match c.data().shared.kv.set(key, value, cas as u32) {
                    Ok(()) => status::OK,
                    Err(crate::shared::SetError::CasMismatch) => status::CAS_MISMATCH,
                    Err(crate::shared::SetError::TooLarge) => status::INTERNAL_FAILURE,
                }
            },
        )?;
        Ok(())
    }

    fn queues(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        self.wrap(ENV, "proxy_register_shared_queue", |mut c: C<'_>, ptr: i32, len: i32, id_out: i32| -> i32 {
            let Some(name) = read(&mut c, ptr, len) else { return status::INVALID_MEMORY_ACCESS };
            let h = c.data();
            if h.effective_root().is_none() {
                return status::BAD_ARGUMENT;
            }
            let owner = Owner { instance: h.instance.clone(), slot: h.slot };
            let id = h.shared.queues.register(h.filter, &name, owner);
            if write(&mut c, id_out, &id.to_le_bytes()) { status::OK } else { status::INVALID_MEMORY_ACCESS }
        })?;
        self.wrap(
            ENV,
            "proxy_resolve_shared_queue",
            |mut c: C<'_>, vptr: i32, vlen: i32, nptr: i32, nlen: i32, id_out: i32| -> i32 {
                let (Some(vm), Some(name)) = (read(&mut c, vptr, vlen), read(&mut c, nptr, nlen)) else {
                    return status::INVALID_MEMORY_ACCESS;
                };
                let h = c.data();
                let vm = if vm.is_empty() { h.filter.as_bytes().to_vec() } else { vm };
                let Some(id) = h.shared.queues.resolve(&vm, &name) else { return status::NOT_FOUND };
                if write(&mut c, id_out, &id.to_le_bytes()) { status::OK } else { status::INVALID_MEMORY_ACCESS }
            },
        )?;
        self.wrap(ENV, "proxy_enqueue_shared_queue", |mut c: C<'_>, id: i32, ptr: i32, len: i32| -> i32 {
            let Some(value) = read(&mut c, ptr, len) else { return status::INVALID_MEMORY_ACCESS };
            match c.data().shared.queues.enqueue(id as u32, value) {
                Some(owner) => {
                    crate::filter::notify_queue(owner, id as u32);
                    status::OK
                }
                None => status::NOT_FOUND,
            }
        })?;
        self.wrap(
            ENV,
            "proxy_dequeue_shared_queue",
            |mut c: C<'_>, id: i32, ptr_out: i32, size_out: i32| -> wasmtime::Result<i32> {
                match c.data().shared.queues.dequeue(id as u32) {
                    None => Ok(status::NOT_FOUND),
                    Some(None) => Ok(status::EMPTY),
                    Some(Some(value)) => give(&mut c, &value, ptr_out, size_out),
                }
            },
        )?;
        Ok(())
    }

    fn metrics(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        self.wrap(ENV, "proxy_define_metric", |mut c: C<'_>, kind: i32, ptr: i32, len: i32, id_out: i32| -> i32 {
            let Some(kind) = MetricType::from_abi(kind) else { return status::BAD_ARGUMENT };
            let Some(name) = read(&mut c, ptr, len) else { return status::INVALID_MEMORY_ACCESS };
            let name = String::from_utf8_lossy(&name);
            let h = c.data();
            let Some(id) = h.shared.metrics.define(h.filter, kind, &name) else { return status::BAD_ARGUMENT };
            if write(&mut c, id_out, &id.to_le_bytes()) { status::OK } else { status::INVALID_MEMORY_ACCESS }
        })?;
        self.wrap(ENV, "proxy_increment_metric", |c: C<'_>, id: i32, delta: i64| -> i32 {
            c.data().shared.metrics.increment(id as u32, delta)
        })?;
        self.wrap(ENV, "proxy_record_metric", |c: C<'_>, id: i32, value: i64| -> i32 {
            c.data().shared.metrics.record(id as u32, value as u64)
        })?;
        self.wrap(ENV, "proxy_get_metric", |mut c: C<'_>, id: i32, out: i32| -> i32 {
            match c.data().shared.metrics.get(id as u32) {
                Ok(v) => {
                    if write(&mut c, out, &v.to_le_bytes()) {
                        status::OK
                    } else {
                        status::INVALID_MEMORY_ACCESS
                    }
                }
                Err(code) => code,
            }
        })?;
        Ok(())
    }

    /// HTTP-only calls (and the 0.1.0 ones): linked so that modules written
    /// for HTTP too instantiate, answering "unimplemented" on a stream.
    fn http_stubs(&mut self) -> wasmtime::Result<()> {
        const ENV: &str = "env";
        const NO: i32 = status::UNIMPLEMENTED;
        self.wrap(ENV, "proxy_get_header_map_pairs", |_: C<'_>, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_set_header_map_pairs", |_: C<'_>, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_get_header_map_value", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_add_header_map_value", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_replace_header_map_value", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_remove_header_map_value", |_: C<'_>, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_get_header_map_size", |_: C<'_>, _: i32, _: i32| NO)?;
        self.wrap(
            ENV,
            "proxy_send_local_response",
            |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| NO,
        )?;
        self.wrap(
            ENV,
            "proxy_http_call",
            |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| NO,
        )?;
        self.wrap(
            ENV,
            "proxy_grpc_call",
            |_: C<'_>,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32,
             _: i32| { NO },
        )?;
        self.wrap(
            ENV,
            "proxy_grpc_stream",
            |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| NO,
        )?;
        self.wrap(ENV, "proxy_grpc_send", |_: C<'_>, _: i32, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_grpc_cancel", |_: C<'_>, _: i32| NO)?;
        self.wrap(ENV, "proxy_grpc_close", |_: C<'_>, _: i32| NO)?;
        self.wrap(ENV, "proxy_get_status", |_: C<'_>, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "proxy_continue_request", |_: C<'_>| NO)?;
        self.wrap(ENV, "proxy_continue_response", |_: C<'_>| NO)?;
        self.wrap(ENV, "proxy_clear_route_cache", |_: C<'_>| NO)?;
        self.wrap(ENV, "proxy_get_configuration", |_: C<'_>, _: i32, _: i32| NO)?;
        self.wrap(ENV, "envoy_resolve_dns", |_: C<'_>, _: i32, _: i32, _: i32| NO)?;
        self.wrap(ENV, "emscripten_notify_memory_growth", |_: C<'_>, _: i32| {})?;
        self.wrap(ENV, "pthread_equal", |_: C<'_>, a: i32, b: i32| i32::from(a == b))?;
        Ok(())
    }
}
