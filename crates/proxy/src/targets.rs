//! What open sessions do when their target goes: drained through the Admin
//! API (`POST /upstreams/{u}/targets/{t}/drain`), marked down by health
//! checks (`on_target_down`), or deleted or set to weight 0 by a
//! configuration change (`on_target_removed`).
//!
//! A drain's "no new sessions" is the upstream crate's (the target's state
//! outlives configuration changes); what happens to the sessions it still
//! holds is here, as that needs the registry of open sessions. Nothing here
//! is on a session's path: it runs on the Admin API's calls, on a health
//! change, on a configuration change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use strait_model::{Config, OnTargetDown, OnTargetRemoved};
use strait_upstream::{SetHealthError, target_key};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::live::{Kill, Live, Registry, now_ms};
use crate::{Snapshot, Tunables};

/// What a drain does at its timeout with the sessions it still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    Close,
    Keep,
}

impl Then {
    pub fn parse(s: &str) -> Option<Then> {
        match s {
            "close" => Some(Then::Close),
            "keep" => Some(Then::Keep),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Then::Close => "close",
            Then::Keep => "keep",
        }
    }
}

/// A drain under way, as the Admin API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainView {
    pub target: String,
    pub draining: bool,
    /// Sessions the target still holds.
    pub sessions: usize,
    pub started_at: Option<u64>,
    pub timeout: Option<Duration>,
    pub then: Option<Then>,
    /// Sessions closed at the timeout.
    pub closed: usize,
}

#[derive(Debug)]
struct Drain {
    started_at: u64,
    timeout: Option<Duration>,
    then: Then,
    closed: Arc<std::sync::atomic::AtomicUsize>,
    timer: Option<JoinHandle<()>>,
}

impl Drop for Drain {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
    }
}

/// The drains and the reactions to targets that go.
#[derive(Debug)]
pub struct Targets {
    pub(crate) sessions: Arc<Registry>,
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) tunables: Arc<ArcSwap<Tunables>>,
    drains: Mutex<HashMap<(Uuid, String), Drain>>,
    /// Removed targets whose sessions close at `drain_timeout`, each with
    /// the token of its timer: a target put back, or removed again, makes
    /// the earlier timer stale.
    removals: Mutex<HashMap<(Uuid, String), u64>>,
    next_removal: std::sync::atomic::AtomicU64,
}

/// The sessions of `upstream` on `target`.
fn on_target(sessions: &Registry, upstream: Uuid, target: &str) -> Vec<Arc<Live>> {
    let id = upstream.to_string();
    sessions.all().into_iter().filter(|l| l.is_on(&id, target)).collect()
}

impl Targets {
    pub(crate) fn new(
        sessions: Arc<Registry>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        tunables: Arc<ArcSwap<Tunables>>,
    ) -> Arc<Targets> {
        Arc::new(Targets {
            sessions,
            snapshot,
            tunables,
            drains: Mutex::default(),
            removals: Mutex::default(),
            next_removal: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Starts draining `target` (its id or `host:port`) of `upstream`: it
    /// takes no new sessions; at `timeout`, `then` says what becomes of
    /// those it still holds. A drain already under way starts over.
    pub fn drain(
        self: &Arc<Self>,
        upstream: Uuid,
        target: &str,
        timeout: Option<Duration>,
        then: Then,
    ) -> Result<DrainView, SetHealthError> {
        let key = self.snapshot.load().upstreams().set_draining(upstream, target, true)?;
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let timer = timeout.filter(|_| then == Then::Close).map(|t| {
            let (me, key, closed) = (Arc::downgrade(self), key.clone(), closed.clone());
            tokio::spawn(async move {
                tokio::time::sleep(t).await;
                let Some(me) = me.upgrade() else { return };
                let n = on_target(&me.sessions, upstream, &key).iter().filter(|l| l.kill()).count();
                closed.store(n, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(%upstream, target = %key, sessions = n, "drain timed out: closed the sessions left");
                }
            })
        });
        let drain = Drain { started_at: now_ms(), timeout, then, closed, timer };
        self.drains.lock().unwrap_or_else(|p| p.into_inner()).insert((upstream, key.clone()), drain);
        self.view(upstream, target)
    }

    /// How the drain of `target` goes (or that it is not draining).
    pub fn view(&self, upstream: Uuid, target: &str) -> Result<DrainView, SetHealthError> {
        let (key, draining) =
            self.snapshot.load().upstreams().draining(upstream, target).ok_or(SetHealthError::TargetNotFound)?;
        let sessions = on_target(&self.sessions, upstream, &key).len();
        let drains = self.drains.lock().unwrap_or_else(|p| p.into_inner());
        let d = drains.get(&(upstream, key.clone())).filter(|_| draining);
        Ok(DrainView {
            draining,
            sessions,
            started_at: d.map(|d| d.started_at),
            timeout: d.and_then(|d| d.timeout),
            then: d.map(|d| d.then),
            closed: d.map_or(0, |d| d.closed.load(std::sync::atomic::Ordering::Relaxed)),
            target: key,
        })
    }

    /// Ends the drain: the target takes sessions again.
    pub fn undrain(&self, upstream: Uuid, target: &str) -> Result<(), SetHealthError> {
        let key = self.snapshot.load().upstreams().set_draining(upstream, target, false)?;
        self.drains.lock().unwrap_or_else(|p| p.into_inner()).remove(&(upstream, key));
        Ok(())
    }

    /// Closes the sessions on addresses health checks mark down, for the
    /// upstreams with `on_target_down: close`. Runs as long as the process.
    pub(crate) fn watch_downs(self: &Arc<Self>) {
        let mut downs = self.snapshot.load().upstreams().subscribe_downs();
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let down = match downs.recv().await {
                    Ok(d) => d,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "too many health changes at once: some on_target_down were missed");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(me) = me.upgrade() else { return };
                let snap = me.snapshot.load();
                let close = snap
                    .config
                    .upstreams
                    .iter()
                    .any(|u| u.meta.id == down.upstream && u.on_target_down == Some(OnTargetDown::Close));
                if !close {
                    continue;
                }
                let id = down.upstream.to_string();
                let n = me
                    .sessions
                    .all()
                    .iter()
                    .filter(|l| l.is_at(&id, down.addr) && l.kill_for(Kill::TargetDown))
                    .count();
                tracing::warn!(upstream = %down.upstream, addr = %down.addr, sessions = n, "on_target_down: closed the sessions of an address marked down");
            }
        });
    }

    /// A new configuration replaced `old`: sessions of targets it deleted
    /// (or set to weight 0) close now or at `drain_timeout`, as their
    /// upstream's `on_target_removed` says.
    pub(crate) fn config_changed(self: &Arc<Self>, old: &Config, new: &Config) {
        {
            // Targets put back: their pending closes are off.
            let mut removals = self.removals.lock().unwrap_or_else(|p| p.into_inner());
            if !removals.is_empty() {
                removals.retain(|(u, key), _| !live_targets(new, *u).contains(key));
            }
        }
        for (upstream, key, what) in removed_targets(old, new) {
            match what {
                OnTargetRemoved::Keep => {}
                OnTargetRemoved::Close => {
                    let n = on_target(&self.sessions, upstream, &key)
                        .iter()
                        .filter(|l| l.kill_for(Kill::TargetRemoved))
                        .count();
                    tracing::info!(%upstream, target = %key, sessions = n, "on_target_removed: closed the sessions of a removed target");
                }
                OnTargetRemoved::Drain => {
                    let token = self.next_removal.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let slot = (upstream, key);
                    self.removals.lock().unwrap_or_else(|p| p.into_inner()).insert(slot.clone(), token);
                    let wait = self.tunables.load().drain;
                    let me = Arc::downgrade(self);
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let Some(me) = me.upgrade() else { return };
                        {
                            let mut removals = me.removals.lock().unwrap_or_else(|p| p.into_inner());
                            // Put back, or removed again since (a later timer's turn).
                            if removals.get(&slot) != Some(&token) {
                                return;
                            }
                            removals.remove(&slot);
                        }
                        let (upstream, key) = slot;
                        let n = on_target(&me.sessions, upstream, &key)
                            .iter()
                            .filter(|l| l.kill_for(Kill::TargetRemoved))
                            .count();
                        tracing::info!(%upstream, target = %key, sessions = n, "on_target_removed: drain_timeout passed, closed the sessions left");
                    });
                }
            }
        }
    }
}

/// The targets with a weight of upstream `id` in `config`.
fn live_targets(config: &Config, id: Uuid) -> HashSet<String> {
    let Some(u) = config.upstreams.iter().position(|u| u.meta.id == id) else { return HashSet::new() };
    config.targets.iter().filter(|t| t.upstream.0 == u && t.weight > 0).map(|t| target_key(&t.host, t.port)).collect()
}

/// Targets with a weight in `old` that `new` deleted or set to weight 0,
/// with what their upstream says to do (the new setting, else the old one
/// when the upstream itself went).
fn removed_targets(old: &Config, new: &Config) -> Vec<(Uuid, String, OnTargetRemoved)> {
    let mut out = Vec::new();
    for u in &old.upstreams {
        let now = new.upstreams.iter().find(|n| n.meta.id == u.meta.id);
        let what = match now {
            Some(n) => n.on_target_removed,
            None => u.on_target_removed,
        };
        let Some(what) = what.filter(|w| *w != OnTargetRemoved::Keep) else { continue };
        let kept = live_targets(new, u.meta.id);
        for key in live_targets(old, u.meta.id) {
            if !kept.contains(&key) {
                out.push((u.meta.id, key, what));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(targets: &[(&str, u16)], removed: Option<&str>) -> Config {
        let targets: String = targets.iter().map(|(t, w)| format!("  - {{target: \"{t}\", weight: {w}}}\n")).collect();
        let setting = removed.map(|r| format!("  on_target_removed: {r}\n")).unwrap_or_default();
        let yaml = format!(
            "_format_version: \"3.0\"\nupstreams:\n- name: pool\n  id: 5f0c2b1e-3d6a-4c1e-9b1a-2f6d8e7c9a10\n{setting}  targets:\n{targets}"
        );
        match strait_model::load_str(&yaml) {
            Ok(l) => l.config,
            Err(e) => panic!("{e:?}\n{yaml}"),
        }
    }

    #[test]
    fn targets_deleted_or_set_to_weight_0_are_removed_as_their_upstream_says() {
        let before = config(&[("10.0.0.1:5432", 100), ("DB.example:5432", 100), ("10.0.0.3:5432", 0)], Some("close"));
        let after = config(&[("10.0.0.1:5432", 0)], Some("close"));
        let mut gone: Vec<String> = removed_targets(&before, &after).into_iter().map(|(_, k, _)| k).collect();
        gone.sort();
        // A target that had no weight was serving nothing: not "removed".
        assert_eq!(gone, ["10.0.0.1:5432", "db.example:5432"]);
        assert!(removed_targets(&before, &before).is_empty());
        // Unset (or keep): nothing to do.
        let keep = config(&[("10.0.0.1:5432", 100)], None);
        assert!(removed_targets(&keep, &config(&[], None)).is_empty());
        // The new setting is the one that counts.
        let drain = config(&[], Some("drain"));
        assert!(removed_targets(&before, &drain).iter().all(|(_, _, w)| *w == OnTargetRemoved::Drain));
        assert_eq!(removed_targets(&before, &drain).len(), 2);
    }
}
