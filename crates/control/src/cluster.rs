//! Cluster mode: keeping a node in step with the shared store.
//!
//! A write on any node commits a new configuration version and a NOTIFY;
//! [`watch`] wakes on it and swaps the new configuration in. Notifications are
//! a fast path only: the version is also polled every `db_update_frequency`,
//! and a lost listener is rebuilt with back-off, so a node catches up after
//! any outage by itself. Each node also records a heartbeat with the
//! configuration it runs, which `GET /clustering/status` lists.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use strait_store::{ConfigEvents, NodeRow};

use crate::control::Control;
use crate::current::now;

/// How often a node records that it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Longest a sync or heartbeat may take before the loop moves on.
const STALL: Duration = Duration::from_secs(10);
/// Nodes whose last heartbeat is older than this are not listed.
pub const RECENT: i64 = 30;

/// Who this node is, for the registry.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub hostname: String,
}

impl Node {
    fn row(&self, control: &Control) -> NodeRow {
        let cur = control.current();
        NodeRow {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config_hash: cur.hash.clone(),
            config_version: cur.version,
            last_seen: now(),
        }
    }
}

/// Keeps `control` in step with its shared store until `stop` says so.
/// `migrate` (a node that started from its cache with `auto_migrate`):
/// apply pending migrations as soon as the database answers.
pub async fn watch(
    control: Arc<Control>,
    node: Node,
    every: Duration,
    mut migrate: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let Some(store) = control.store().cloned() else { return };
    let mut events: Option<ConfigEvents> = None;
    let mut retry_events = Instant::now();
    let mut backoff = Duration::from_millis(250);
    let mut last_beat: Option<Instant> = None;
    let mut served = control.changes();
    let mut beat_now = true;
    let mut last_error: Option<String> = None;
    let mut poll = tokio::time::interval(every);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // (Re)subscribe first, then read the version: nothing written in
        // between is missed.
        if events.is_none() && Instant::now() >= retry_events {
            match store.events().await {
                Ok(e) => {
                    events = e;
                    backoff = Duration::from_millis(250);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot listen for configuration changes");
                    retry_events = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if migrate {
            match tokio::time::timeout(STALL, store.migrate_up()).await {
                Ok(Ok(_)) => migrate = false,
                Ok(Err(e)) if !e.is_unreachable() => {
                    tracing::error!(error = %e, "database migrations failed");
                    migrate = false;
                }
                _ => {}
            }
        }
        // Bounded: a database that accepts connections but never answers
        // (a network partition) must not stall the loop.
        let synced = tokio::time::timeout(STALL, control.sync()).await;
        if synced.is_err() {
            control.note_stalled();
        }
        let changed = match synced.unwrap_or(Ok(false)) {
            Ok(changed) => {
                last_error = None;
                changed
            }
            Err(e) => {
                // Once per distinct error, not once per poll.
                let text = e.to_string();
                if control.db_reachable() && last_error.as_deref() != Some(text.as_str()) {
                    tracing::error!(error = %text, "cannot apply the stored configuration; keeping the current one");
                }
                last_error = Some(text);
                false
            }
        };
        if changed || beat_now || last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
            beat_now = false;
            match tokio::time::timeout(STALL, store.heartbeat(&node.row(&control))).await {
                Ok(Ok(())) => last_beat = Some(Instant::now()),
                Ok(Err(e)) => tracing::debug!(error = %e, "heartbeat not recorded"),
                Err(_) => tracing::debug!("heartbeat timed out"),
            }
        }
        // Wait for a notification, the poll, a local change, or the end.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = poll.tick() => {}
            // A write on this node: the registry should say so at once.
            Ok(()) = served.changed() => beat_now = true,
            r = next_event(&mut events) => match r {
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "configuration change listener lost");
                    events = None;
                }
            },
        }
    }
}

/// The next notification, or never when there is no listener.
async fn next_event(events: &mut Option<ConfigEvents>) -> Result<Option<i64>, strait_store::StoreError> {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

/// `GET /clustering/status`: the nodes seen in the last [`RECENT`] seconds,
/// keyed by node id as Kong's, each with the configuration it runs.
pub async fn status(control: &Control, node: &Node) -> Value {
    let mut out = Map::new();
    if let Some(store) = control.store() {
        if control.db_reachable() {
            if let Ok(rows) = store.nodes(RECENT).await {
                for r in rows {
                    out.insert(r.id.clone(), node_json(&r));
                }
            }
        }
    }
    // This node as it is now, whatever the registry last heard.
    let me = node.row(control);
    out.insert(me.id.clone(), node_json(&me));
    Value::Object(out)
}

fn node_json(r: &NodeRow) -> Value {
    json!({
        "hostname": r.hostname,
        "config_hash": r.config_hash,
        "config_version": r.config_version,
        "last_seen": r.last_seen,
        "version": r.version,
    })
}
