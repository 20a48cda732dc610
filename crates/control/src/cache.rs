//! The configuration cache (cluster mode with `db_cache`): the last
//! configuration served, kept in `prefix/config_cache.json` so a node can
//! start while PostgreSQL is unreachable. It holds private keys, so it is
//! created 0600, and it is replaced atomically so a crash never leaves half
//! a file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use strait_model::{EntityKind, Options, load_value_with};

use crate::control::{Control, ControlError};
use crate::current::Current;

impl Control {
    /// Keeps the configuration in `path` after every change from now on
    /// (shared store with `db_cache`), and writes the current one now.
    pub fn set_cache(&self, path: PathBuf) {
        if self.cache.set(path).is_ok() {
            self.save_cache(&self.current());
        }
    }

    /// Writes the cache on a blocking thread (it ends in an fsync); writes
    /// finishing out of order never replace a newer version with an older.
    pub(crate) fn save_cache(&self, current: &Current) {
        let Some(path) = self.cache.get().cloned() else { return };
        let body = body(current);
        let version = current.version;
        let written = self.cache_written.clone();
        let job = move || {
            let Ok(mut last) = written.lock() else { return };
            if *last >= version {
                return;
            }
            match write(&path, &body) {
                Ok(()) => *last = version,
                Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot write the configuration cache"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(job)),
            Err(_) => job(),
        }
    }
}

/// The declarative document, its version and insertion order.
fn body(current: &Current) -> String {
    let seqs: Vec<Value> = current.seqs.iter().map(|((k, id), seq)| json!([k.as_str(), id, seq])).collect();
    json!({ "version": current.version, "hash": current.hash, "config": current.doc, "seqs": seqs }).to_string()
}

fn write(path: &Path, body: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(body.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads what [`write`] wrote, validated as any stored configuration.
pub(crate) fn read(path: &Path, options: &Options) -> Result<Current, ControlError> {
    let bad = |reason: String| ControlError::Cache { path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let version = v.get("version").and_then(Value::as_i64).ok_or_else(|| bad("no version".into()))?;
    let mut doc = v.get("config").cloned().ok_or_else(|| bad("no config".into()))?;
    if let Some(o) = doc.as_object_mut() {
        o.insert("_format_version".into(), json!("3.0"));
    }
    let mut seqs = HashMap::new();
    for e in v.get("seqs").and_then(Value::as_array).into_iter().flatten() {
        let kind = e.get(0).and_then(Value::as_str).and_then(EntityKind::parse);
        if let (Some(k), Some(id), Some(seq)) =
            (kind, e.get(1).and_then(Value::as_str), e.get(2).and_then(Value::as_i64))
        {
            seqs.insert((k, id.to_owned()), seq);
        }
    }
    let config = load_value_with(&doc, options).map_err(|e| bad(e.to_string()))?.config;
    Ok(Current::new(Arc::new(config), seqs, version))
}
