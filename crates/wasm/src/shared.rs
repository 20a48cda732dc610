//! What a process's filters share across their instances: the key-value
//! store (`proxy_{get,set}_shared_data`, with compare-and-swap) and the
//! queues (`proxy_*_shared_queue`), both process-wide as Kong's `shm_kv`,
//! and the metrics filters define.
//!
//! The store is bounded by `nginx_wasm_shm_kv` (keys and values together):
//! past it, the least recently written entries are evicted, as
//! ngx_wasm_module's store evicts. Queues hold at most [`QUEUE_MAX`] items
//! and [`QUEUE_MAX_BYTES`] each; older items are dropped first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, Weak};

use crate::filter::FilterInstance;
use crate::metrics::Metrics;

/// Most items one queue holds.
pub(crate) const QUEUE_MAX: usize = 10_000;
/// The most bytes one queue holds (its items together).
pub(crate) const QUEUE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Everything shared, one per process.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) kv: Kv,
    pub(crate) queues: Queues,
    pub(crate) metrics: std::sync::Arc<Metrics>,
}

impl Shared {
    pub(crate) fn new(kv_limit: usize, metrics: std::sync::Arc<Metrics>) -> Shared {
        Shared { kv: Kv::new(kv_limit), queues: Queues::default(), metrics }
    }
}

/// Why a set was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetError {
    CasMismatch,
    /// The entry alone is larger than the whole store.
    TooLarge,
}

/// The shared key-value store.
#[derive(Debug)]
pub(crate) struct Kv {
    limit: usize,
    inner: Mutex<KvInner>,
}

#[derive(Debug, Default)]
struct KvInner {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    /// Keys by the cas of their last write: the oldest write first.
    order: BTreeMap<u32, Vec<u8>>,
    bytes: usize,
    /// The last cas given (never 0).
    cas: u32,
}

impl Kv {
    fn new(limit: usize) -> Kv {
        Kv { limit, inner: Mutex::new(KvInner::default()) }
    }

    /// The value and its cas.
    pub(crate) fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.entries.get(key).cloned()
    }

    /// Stores `value`; with a non-zero `cas`, only if the stored entry still
    /// has it (a missing key ignores it, as Envoy does).
    pub(crate) fn set(&self, key: Vec<u8>, value: Vec<u8>, cas: u32) -> Result<(), SetError> {
        let size = key.len() + value.len();
        if size > self.limit {
            return Err(SetError::TooLarge);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, stored)) = inner.entries.get(&key)
            && cas != 0
            && cas != *stored
        {
            return Err(SetError::CasMismatch);
        }
        inner.cas = match inner.cas.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        let new_cas = inner.cas;
        if let Some((old, old_cas)) = inner.entries.remove(&key) {
            inner.order.remove(&old_cas);
            inner.bytes -= key.len() + old.len();
        }
        while inner.bytes + size > self.limit {
            let Some((_, oldest)) = inner.order.pop_first() else { break };
            if let Some((v, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= oldest.len() + v.len();
            }
        }
        inner.bytes += size;
        inner.order.insert(new_cas, key.clone());
        inner.entries.insert(key, (value, new_cas));
        Ok(())
    }
}

/// Who is told when a queue has items: the root context of one instance
/// of a configured filter.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub(crate) instance: Weak<FilterInstance>,
    pub(crate) slot: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Queues {
    inner: Mutex<QueuesInner>,
}

#[derive(Debug, Default)]
struct QueuesInner {
    by_name: HashMap<(Vec<u8>, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next: u32,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    /// The items' bytes together.
    bytes: usize,
    owner: Owner,
}

impl Queues {
    /// Makes or opens the queue `name` of `vm`; the caller is told of new
    /// items from now on (the last to register wins).
    pub(crate) fn register(&self, vm: &str, name: &[u8], owner: Owner) -> u32 {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let key = (vm.as_bytes().to_vec(), name.to_vec());
        if let Some(&id) = inner.by_name.get(&key) {
            if let Some(q) = inner.queues.get_mut(&id) {
                q.owner = owner;
            }
            return id;
        }
        inner.next += 1;
        let id = inner.next;
        inner.by_name.insert(key, id);
        inner.queues.insert(id, Queue { items: VecDeque::new(), bytes: 0, owner });
        id
    }

    pub(crate) fn resolve(&self, vm: &[u8], name: &[u8]) -> Option<u32> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.by_name.get(&(vm.to_vec(), name.to_vec())).copied()
    }

    /// Appends; gives the owner to notify, `None` for an unknown queue.
    pub(crate) fn enqueue(&self, id: u32, value: Vec<u8>) -> Option<Owner> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let q = inner.queues.get_mut(&id)?;
        q.bytes += value.len();
        q.items.push_back(value);
        while q.items.len() > QUEUE_MAX || (q.bytes > QUEUE_MAX_BYTES && q.items.len() > 1) {
            if let Some(old) = q.items.pop_front() {
                q.bytes -= old.len();
            }
        }
        Some(q.owner.clone())
    }

    /// `None`: unknown queue; `Some(None)`: empty.
    pub(crate) fn dequeue(&self, id: u32) -> Option<Option<Vec<u8>>> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.queues.get_mut(&id).map(|q| {
            let item = q.items.pop_front();
            q.bytes -= item.as_ref().map_or(0, Vec::len);
            item
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules_are_envoys() {
        let kv = Kv::new(1024);
        assert!(kv.get(b"k").is_none());
        kv.set(b"k".to_vec(), b"1".to_vec(), 77).expect("a missing key ignores the cas");
        let (v, cas) = kv.get(b"k").expect("stored");
        assert_eq!(v, b"1");
        assert_eq!(kv.set(b"k".to_vec(), b"2".to_vec(), cas + 1), Err(SetError::CasMismatch));
        kv.set(b"k".to_vec(), b"2".to_vec(), cas).expect("the current cas");
        kv.set(b"k".to_vec(), b"3".to_vec(), 0).expect("cas 0 always writes");
        assert_eq!(kv.get(b"k").map(|(v, _)| v), Some(b"3".to_vec()));
    }

    #[test]
    fn the_oldest_writes_go_when_the_store_is_full() {
        let kv = Kv::new(10);
        kv.set(b"a".to_vec(), b"1234".to_vec(), 0).unwrap();
        kv.set(b"b".to_vec(), b"1234".to_vec(), 0).unwrap();
        kv.set(b"c".to_vec(), b"1234".to_vec(), 0).unwrap();
        assert!(kv.get(b"a").is_none(), "evicted");
        assert!(kv.get(b"b").is_some() && kv.get(b"c").is_some());
        assert_eq!(kv.set(b"d".to_vec(), vec![0; 20], 0), Err(SetError::TooLarge));
    }
}
