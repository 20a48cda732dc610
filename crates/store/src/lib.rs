//! The configuration store: Kong entities kept as JSON documents in SQLite
//! (PostgreSQL joins behind the same interface in the cluster issue).
//!
//! The store does not validate: the control plane validates the whole
//! configuration with the declarative loader and hands the store the rows
//! that changed, written in one transaction together with the new
//! configuration version. Schema migrations are versioned SQL applied in order.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row as _, Sqlite, Transaction};

/// One stored entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The declarative list it belongs to: `services`, `routes`, ….
    pub kind: String,
    pub id: String,
    /// Insertion order across all kinds; entities load in this order.
    pub seq: i64,
    pub doc: Value,
}

/// A schema migration and whether it has been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    pub version: i64,
    pub name: &'static str,
    pub applied: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("cannot create the database file {path}: {source}")]
    Create { path: String, source: std::io::Error },
    #[error(
        "the database schema is at version {found}, newer than this binary knows ({known}): upgrade Strait or use another database"
    )]
    NewerSchema { found: i64, known: i64 },
    #[error(
        "the database has {0} pending migration(s): run `strait migrations up` (or start without migrations disabled)"
    )]
    Pending(usize),
    #[error("stored {kind} {id} is not valid JSON: {reason}")]
    Corrupt { kind: String, id: String, reason: String },
}

/// Versioned schema, applied in order, each in its own transaction.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "001_entities",
    "CREATE TABLE entities (
         kind TEXT NOT NULL,
         id   TEXT NOT NULL,
         seq  INTEGER NOT NULL,
         doc  TEXT NOT NULL,
         PRIMARY KEY (kind, id)
     );
     CREATE INDEX entities_seq ON entities (seq);
     CREATE TABLE config_state (
         key   TEXT PRIMARY KEY,
         value INTEGER NOT NULL
     );
     INSERT INTO config_state (key, value) VALUES ('version', 0), ('next_seq', 1);",
)];

/// A store handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating with mode 0600 if needed) the SQLite database at `path`.
    /// Migrations are not applied here: see [`Store::migrate_up`].
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|source| StoreError::Create { path: dir.display().to_string(), source })?;
            }
            create_private(path).map_err(|source| StoreError::Create { path: path.display().to_string(), source })?;
        }
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS strait_migrations (
                 version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        Ok(Store { pool })
    }

    /// Every known migration and whether it is applied.
    pub async fn migrations(&self) -> Result<Vec<MigrationStatus>, StoreError> {
        let applied: Vec<i64> = sqlx::query("SELECT version FROM strait_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.get::<i64, _>(0))
            .collect();
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if let Some(&found) = applied.iter().max() {
            if found > known {
                return Err(StoreError::NewerSchema { found, known });
            }
        }
        Ok(MIGRATIONS
            .iter()
            .map(|(version, name, _)| MigrationStatus { version: *version, name, applied: applied.contains(version) })
            .collect())
    }

    /// Applies pending migrations; returns the names applied.
    pub async fn migrate_up(&self) -> Result<Vec<&'static str>, StoreError> {
        let mut done = Vec::new();
        for status in self.migrations().await? {
            if status.applied {
                continue;
            }
            let Some((_, _, sql)) = MIGRATIONS.iter().find(|m| m.0 == status.version) else {
                continue;
            };
            let mut tx = self.pool.begin().await?;
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO strait_migrations (version, name, applied_at) VALUES (?, ?, strftime('%s','now'))",
            )
            .bind(status.version)
            .bind(status.name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(migration = status.name, "migration applied");
            done.push(status.name);
        }
        Ok(done)
    }

    /// Fails unless every migration is applied.
    pub async fn ensure_migrated(&self) -> Result<(), StoreError> {
        let pending = self.migrations().await?.iter().filter(|m| !m.applied).count();
        if pending > 0 { Err(StoreError::Pending(pending)) } else { Ok(()) }
    }

    /// Every entity, in insertion order, and the configuration version.
    pub async fn load(&self) -> Result<(Vec<Row>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query("SELECT kind, id, seq, doc FROM entities ORDER BY seq").fetch_all(&mut *tx).await?;
        let version = read_state(&mut tx, "version").await?;
        tx.commit().await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let kind: String = r.get(0);
            let id: String = r.get(1);
            let text: String = r.get(3);
            let doc = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                kind: kind.clone(),
                id: id.clone(),
                reason: e.to_string(),
            })?;
            out.push(Row { kind, id, seq: r.get(2), doc });
        }
        Ok((out, version))
    }

    /// The next insertion sequence numbers to hand out: `n` of them.
    pub async fn reserve_seq(&self, n: i64) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let next = read_state(&mut tx, "next_seq").await?;
        sqlx::query("UPDATE config_state SET value = ? WHERE key = 'next_seq'")
            .bind(next + n)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// Writes changed rows and removes deleted ones in one transaction, and
    /// bumps the configuration version. Returns the new version.
    pub async fn write(&self, upserts: &[Row], deletes: &[(String, String)]) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        for (kind, id) in deletes {
            sqlx::query("DELETE FROM entities WHERE kind = ? AND id = ?").bind(kind).bind(id).execute(&mut *tx).await?;
        }
        for row in upserts {
            sqlx::query(
                "INSERT INTO entities (kind, id, seq, doc) VALUES (?, ?, ?, ?)
                 ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq, doc = excluded.doc",
            )
            .bind(&row.kind)
            .bind(&row.id)
            .bind(row.seq)
            .bind(row.doc.to_string())
            .execute(&mut *tx)
            .await?;
        }
        let max_seq = upserts.iter().map(|r| r.seq).max().unwrap_or(0);
        sqlx::query("UPDATE config_state SET value = MAX(value, ?) WHERE key = 'next_seq'")
            .bind(max_seq + 1)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE config_state SET value = value + 1 WHERE key = 'version'").execute(&mut *tx).await?;
        let version = read_state(&mut tx, "version").await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Answers when the database does (for `/status`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

async fn read_state(tx: &mut Transaction<'_, Sqlite>, key: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query("SELECT value FROM config_state WHERE key = ?").bind(key).fetch_one(&mut **tx).await?.get(0))
}

fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map(drop)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use serde_json::json;

    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("strait-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("strait.db")
    }

    #[tokio::test]
    async fn migrations_rows_and_versions() {
        let path = temp_db("basic");
        let store = Store::open_sqlite(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(store.ensure_migrated().await, Err(StoreError::Pending(1))));
        assert_eq!(store.migrate_up().await.unwrap(), vec!["001_entities"]);
        assert!(store.migrate_up().await.unwrap().is_empty(), "idempotent");
        store.ensure_migrated().await.unwrap();

        let seq = store.reserve_seq(2).await.unwrap();
        let a = Row { kind: "services".into(), id: "a".into(), seq, doc: json!({"name": "a"}) };
        let b = Row { kind: "routes".into(), id: "b".into(), seq: seq + 1, doc: json!({"name": "b"}) };
        assert_eq!(store.write(&[a.clone(), b.clone()], &[]).await.unwrap(), 1);
        let (rows, version) = store.load().await.unwrap();
        assert_eq!((rows, version), (vec![a.clone(), b], 1));

        let a2 = Row { doc: json!({"name": "a2"}), ..a };
        assert_eq!(store.write(std::slice::from_ref(&a2), &[("routes".into(), "b".into())]).await.unwrap(), 2);
        store.close().await;

        // Reopened: the data is still there.
        let store = Store::open_sqlite(&path).await.unwrap();
        let (rows, version) = store.load().await.unwrap();
        assert_eq!((rows, version), (vec![a2], 2));
        assert!(store.reserve_seq(1).await.unwrap() > seq + 1);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let path = temp_db("newer");
        let store = Store::open_sqlite(&path).await.unwrap();
        store.migrate_up().await.unwrap();
        sqlx::query("INSERT INTO strait_migrations (version, name, applied_at) VALUES (99, 'future', 0)")
            .execute(&store.pool)
            .await
            .unwrap();
        let err = store.ensure_migrated().await.unwrap_err().to_string();
        assert!(err.contains("version 99, newer than this binary knows (1)"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
