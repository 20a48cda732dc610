//! The configuration being served, as the Admin API reads it: the typed
//! `Config` (shared with the snapshot compiled from it), the same entities
//! as Kong-shaped JSON, their insertion order, version and hash.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use strait_model::{Config, EntityKind, LoadError, Options, export, load_value_with};
use strait_store::Row;

/// The configuration being served, with what the Admin API needs around it.
#[derive(Debug)]
pub struct Current {
    /// The one copy: the snapshot serving it holds the same `Arc`.
    pub config: Arc<Config>,
    /// `export::to_declarative(&config)`: Kong-shaped entities by kind.
    pub doc: Value,
    /// Insertion order of each stored entity, by (kind, id).
    pub seqs: HashMap<(EntityKind, String), i64>,
    pub version: i64,
    pub hash: String,
}

impl Current {
    pub(crate) fn new(config: Arc<Config>, mut seqs: HashMap<(EntityKind, String), i64>, version: i64) -> Current {
        let mut doc = export::to_declarative(&config);
        // Entities without a stored position (database `off`) take the next
        // ones in document order; lists are kept in position order, which is
        // the order pagination walks and a restart loads.
        let mut next = seqs.values().max().copied().unwrap_or(0) + 1;
        for kind in EntityKind::ALL {
            let Some(list) = doc.get_mut(kind.as_str()).and_then(Value::as_array_mut) else { continue };
            for e in list.iter() {
                seqs.entry((kind, id_of(e).to_owned())).or_insert_with(|| {
                    next += 1;
                    next - 1
                });
            }
            list.sort_by_key(|e| seqs.get(&(kind, id_of(e).to_owned())).copied().unwrap_or(0));
        }
        let hash = config_hash(&doc);
        Current { config, doc, seqs, version, hash }
    }

    /// Entities of `kind`, in order.
    pub fn list(&self, kind: EntityKind) -> &[Value] {
        self.doc.get(kind.as_str()).and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }

    pub fn seq(&self, kind: EntityKind, id: &str) -> i64 {
        self.seqs.get(&(kind, id.to_owned())).copied().unwrap_or(0)
    }
}

/// An entity's `id` in its JSON form.
pub fn id_of(e: &Value) -> &str {
    e.get("id").and_then(Value::as_str).unwrap_or_default()
}

/// Kong's `configuration_hash`: 32 hex digits over the canonical document.
/// Timestamps are left out: the same entities imported again hash the same.
pub fn config_hash(doc: &Value) -> String {
    let mut doc = doc.clone();
    for kind in EntityKind::ALL {
        for e in doc.get_mut(kind.as_str()).and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(o) = e.as_object_mut() {
                o.remove("created_at");
                o.remove("updated_at");
            }
        }
    }
    // FNV-1a, 128 bits: stable across runs and builds, which is all a change
    // detector needs.
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in doc.to_string().bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    format!("{h:032x}")
}

/// Seconds since the epoch, Kong's timestamps.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The served configuration from stored rows. A row of a kind this build
/// does not know goes into the document as it is, for the loader to refuse.
pub(crate) fn from_rows(rows: Vec<Row>, version: i64, options: &Options) -> Result<Current, LoadError> {
    let mut doc = json!({ "_format_version": "3.0" });
    let mut seqs = HashMap::new();
    for row in rows {
        if let Some(kind) = EntityKind::parse(&row.kind) {
            seqs.insert((kind, row.id.clone()), row.seq);
        }
        if let Some(list) = doc.as_object_mut().map(|o| o.entry(row.kind).or_insert_with(|| json!([]))) {
            if let Some(a) = list.as_array_mut() {
                a.push(row.doc);
            }
        }
    }
    let config = load_value_with(&doc, options)?.config;
    Ok(Current::new(Arc::new(config), seqs, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_and_sensitive() {
        let a = json!({"services": [{"name": "a"}]});
        assert_eq!(config_hash(&a), config_hash(&a.clone()));
        assert_ne!(config_hash(&a), config_hash(&json!({"services": [{"name": "b"}]})));
        assert_eq!(config_hash(&a).len(), 32);
    }
}
