//! One change to the configuration, through the single writer.
//!
//! [`Control::apply`] takes the writer lock (and, on a shared store, the
//! cluster-wide one), edits a copy of the whole configuration as Kong's flat
//! declarative JSON, validates it with the loader the declarative file uses,
//! compiles a snapshot, writes the rows that changed in one transaction, and
//! only then publishes the snapshot. A change that fails at any step leaves
//! the store and the running configuration as they were, and says why as a
//! [`ChangeError`]; what that means in HTTP is the Admin API's business.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use strait_model::{Config, EntityError, EntityKind, ErrorKind, LoadError, export, load_value_with};
use strait_proxy::{CompileError, Snapshot};
use strait_store::{Row, StoreError};

use crate::control::{Control, ControlError};
use crate::current::{Current, id_of, now};

/// What a successful change produced.
#[derive(Debug)]
pub struct Applied {
    pub current: Arc<Current>,
    /// The entity the change was about, as `(kind, id)`.
    pub target: Option<(EntityKind, String)>,
}

/// Why a change was not made. `E` is the edit's own error.
#[derive(Debug)]
pub enum ChangeError<E> {
    /// The edit refused (its error, passed through).
    Edit(E),
    /// The configuration the edit made does not validate. `target` is where
    /// the entity the change is about sits in the document (`routes[3]`), so
    /// errors about it can be told from errors elsewhere.
    Invalid { error: LoadError, target: Option<String> },
    /// The entity the change writes takes a unique value (a name, a target
    /// in its upstream, a plugin in its scope) another entity has.
    Conflict(EntityError),
    /// It validates but does not compile (a certificate rustls refuses, a
    /// plugin that cannot be configured).
    Compile(CompileError),
    /// The store failed.
    Store(StoreError),
    /// Another node wrote a configuration this node cannot serve.
    Stored(Box<ControlError>),
    /// The write task ended without finishing (the runtime shutting down).
    Interrupted(String),
}

impl<E: fmt::Display> fmt::Display for ChangeError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeError::Edit(e) => e.fmt(f),
            ChangeError::Invalid { error, .. } => error.fmt(f),
            ChangeError::Conflict(e) => e.fmt(f),
            ChangeError::Compile(e) => e.fmt(f),
            ChangeError::Store(e) => write!(f, "the database: {e}"),
            ChangeError::Stored(e) => e.fmt(f),
            ChangeError::Interrupted(why) => write!(f, "the write did not finish: {why}"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for ChangeError<E> {}

/// The edit of a change: gets a copy of the flat declarative document and
/// returns the entity it created or changed, `(kind, id)`, if any.
pub type EditResult<E> = Result<Option<(EntityKind, String)>, E>;

impl Control {
    /// Applies one change (see the module's doc).
    pub async fn apply<F, E>(self: &Arc<Self>, edit: F) -> Result<Applied, ChangeError<E>>
    where
        F: FnOnce(&mut Value) -> EditResult<E>,
        E: Send + 'static,
    {
        self.change(edit, false).await
    }

    /// Validates a change as [`Control::apply`] would, without applying it.
    pub async fn check<F, E>(self: &Arc<Self>, edit: F) -> Result<(), ChangeError<E>>
    where
        F: FnOnce(&mut Value) -> EditResult<E>,
        E: Send + 'static,
    {
        self.change(edit, true).await.map(drop)
    }

    async fn change<F, E>(self: &Arc<Self>, edit: F, dry_run: bool) -> Result<Applied, ChangeError<E>>
    where
        F: FnOnce(&mut Value) -> EditResult<E>,
        E: Send + 'static,
    {
        let guard = self.write_lock.clone().lock_owned().await;
        let mut old = self.current.load_full();
        // The store's change holds the cluster-wide writer lock from here to
        // its commit; if another node wrote since this one last synced, the
        // edit applies to the newer configuration, never over it.
        let mut pending = None;
        // A dry run (validation only) checks against the served
        // configuration and needs neither the database nor its lock.
        if let Some(store) = self.store.as_ref().filter(|_| !dry_run) {
            let begun = store.begin_change().await;
            self.note_store_result(&begun);
            let mut w = begun.map_err(ChangeError::Store)?;
            let version = w.version().await;
            self.note_store_result(&version);
            if version.map_err(ChangeError::Store)? != old.version {
                let (rows, version) = w.load().await.map_err(ChangeError::Store)?;
                old = self.adopt(rows, version).map_err(|e| ChangeError::Stored(Box::new(e)))?;
            }
            pending = Some(w);
        }
        let mut doc = old.doc.clone();
        let target = edit(&mut doc).map_err(ChangeError::Edit)?;
        stamp(&mut doc, &old.doc);
        let target_path = target.as_ref().and_then(|(kind, id)| {
            doc.get(kind.as_str())?
                .as_array()?
                .iter()
                .rposition(|e| id_of(e) == id)
                .map(|i| format!("{kind}[{}]", i + 1))
        });
        let loaded = load_value_with(&doc, &self.options).map_err(|error| invalid(error, target_path))?;
        let config = Arc::new(loaded.config);
        let snapshot = self.compile(&config).map_err(ChangeError::Compile)?;
        if dry_run {
            return Ok(Applied { current: old, target });
        }
        // From here on the change runs to its end even if the request is
        // dropped (client gone, shutdown): a commit is always followed by the
        // swap, and the lock is held until both are done.
        let this = self.clone();
        let tail = async move {
            let _guard = guard;
            this.commit(pending, old, config, snapshot, target).await
        };
        match tokio::spawn(tail).await {
            Ok(done) => done.map_err(ChangeError::Store),
            Err(e) => Err(ChangeError::Interrupted(e.to_string())),
        }
    }

    async fn commit(
        &self,
        pending: Option<strait_store::Change>,
        old: Arc<Current>,
        config: Arc<Config>,
        snapshot: Snapshot,
        target: Option<(EntityKind, String)>,
    ) -> Result<Applied, StoreError> {
        let new_doc = export::to_declarative(&config);

        // Persist the rows that changed, with stable insertion order.
        let mut seqs = old.seqs.clone();
        let version = match pending {
            None => old.version + 1,
            Some(mut w) => {
                let (upserts, deletes) = diff(&old.doc, &new_doc);
                let mut rows: Vec<Row> = upserts
                    .into_iter()
                    .map(|(kind, id, doc)| {
                        let seq = seqs.get(&(kind, id.clone())).copied().unwrap_or(0);
                        Row { kind: kind.as_str().to_owned(), id, seq, doc }
                    })
                    .collect();
                let deleted: Vec<(String, String)> =
                    deletes.iter().map(|(k, id)| (k.as_str().to_owned(), id.clone())).collect();
                let written = match w.write(&mut rows, &deleted).await {
                    Ok(v) => w.commit().await.map(|()| v),
                    Err(e) => Err(e),
                };
                self.note_store_result(&written);
                let version = written?;
                for row in rows {
                    if let Some(kind) = EntityKind::parse(&row.kind) {
                        seqs.insert((kind, row.id), row.seq);
                    }
                }
                for key in &deletes {
                    seqs.remove(key);
                }
                version
            }
        };
        self.publish(snapshot);
        let current = Arc::new(Current::new(config, seqs, version));
        self.current.store(current.clone());
        self.save_cache(&current);
        self.served.send_replace(version);
        Ok(Applied { current, target })
    }
}

/// A change that does not validate; for one entity, a unique value it takes
/// (found on it or on the entity that had the value first) is a conflict.
fn invalid<E>(error: LoadError, target: Option<String>) -> ChangeError<E> {
    if let (Some(_), LoadError::Invalid(errors)) = (&target, &error) {
        if let Some(e) = errors.iter().find(|e| matches!(e.kind, ErrorKind::Unique { .. })) {
            return ChangeError::Conflict(e.clone());
        }
    }
    ChangeError::Invalid { error, target }
}

/// Replaces the whole document (`POST /config`, imports).
pub fn replace_all<E>(doc: &mut Value, new: Value) -> EditResult<E> {
    *doc = new;
    Ok(None)
}

/// Entities that arrive without timestamps (declarative imports) keep the
/// ones they had under the same id, or get them now.
fn stamp(doc: &mut Value, old: &Value) {
    let t = now();
    let mut before: HashMap<(EntityKind, &str), &Map<String, Value>> = HashMap::new();
    for kind in EntityKind::ALL {
        for e in old.get(kind.as_str()).and_then(Value::as_array).into_iter().flatten() {
            if let Some(o) = e.as_object() {
                before.insert((kind, id_of(e)), o);
            }
        }
    }
    for kind in EntityKind::ALL {
        for e in doc.get_mut(kind.as_str()).and_then(Value::as_array_mut).into_iter().flatten() {
            let id = id_of(e).to_owned();
            let Some(o) = e.as_object_mut() else { continue };
            for key in ["created_at", "updated_at"] {
                if o.get(key).is_none_or(Value::is_null) {
                    let kept = before.get(&(kind, id.as_str())).and_then(|b| b.get(key)).filter(|v| !v.is_null());
                    o.insert(key.to_owned(), kept.cloned().unwrap_or(json!(t)));
                }
            }
        }
    }
}

type Upsert = (EntityKind, String, Value);

/// Rows to write and rows to delete between two documents.
fn diff(old: &Value, new: &Value) -> (Vec<Upsert>, Vec<(EntityKind, String)>) {
    let index = |doc: &Value| -> HashMap<(EntityKind, String), Value> {
        let mut m = HashMap::new();
        for kind in EntityKind::ALL {
            for e in doc.get(kind.as_str()).and_then(Value::as_array).into_iter().flatten() {
                if let Some(id) = e.get("id").and_then(Value::as_str) {
                    m.insert((kind, id.to_owned()), e.clone());
                }
            }
        }
        m
    };
    let before = index(old);
    let mut upserts = Vec::new();
    // New entities in document order, so insertion order follows it.
    for kind in EntityKind::ALL {
        for e in new.get(kind.as_str()).and_then(Value::as_array).into_iter().flatten() {
            let Some(id) = e.get("id").and_then(Value::as_str) else { continue };
            if before.get(&(kind, id.to_owned())) != Some(e) {
                upserts.push((kind, id.to_owned(), e.clone()));
            }
        }
    }
    let after = index(new);
    let deletes = before.into_keys().filter(|k| !after.contains_key(k)).collect();
    (upserts, deletes)
}
