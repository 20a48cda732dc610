//! The configuration store: Kong entities kept as JSON documents, in SQLite
//! (one node, the default) or in PostgreSQL (several nodes sharing one
//! configuration).
//!
//! The store does not validate: the control plane validates the whole
//! configuration with the declarative loader and hands the store the rows
//! that changed, written in one transaction together with the new
//! configuration version. A change runs inside a [`Change`], which on
//! PostgreSQL holds a cluster-wide lock from the moment it reads the version
//! to its commit, so writers on different nodes are serialized and each one
//! edits the latest configuration. Schema migrations are versioned SQL
//! applied in order, under the same kind of lock.
//!
//! Both backends run the same SQL text (`$n` placeholders work in both); the
//! `with_backend!` macro expands one body per backend.

mod pg;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Postgres, Row as _, Sqlite, Transaction};

pub use pg::{ConfigEvents, NodeRow};
pub use strait_config::PgSettings;

/// One stored entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The declarative list it belongs to: `services`, `routes`, ….
    pub kind: String,
    pub id: String,
    /// Insertion order across all kinds; entities load in this order. `0`
    /// asks [`Change::write`] to assign the next one.
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
        "the database has {0} pending migration(s): run `strait migrations up`, or set auto_migrate = on to let `strait start` apply them"
    )]
    Pending(usize),
    #[error("stored {kind} {id} is not valid JSON: {reason}")]
    Corrupt { kind: String, id: String, reason: String },
}

impl StoreError {
    /// The database could not be reached at all (as opposed to refusing a
    /// statement): the cases where a node keeps running on what it has.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Db(e) => pg::is_unreachable(e),
            _ => false,
        }
    }
}

/// A versioned schema step: `(version, name, SQL)`.
type Migration = (i64, &'static str, &'static str);

/// SQLite's schema.
const SQLITE_MIGRATIONS: &[Migration] = &[(
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

/// PostgreSQL's schema: the same tables with 64-bit integers, and the
/// cluster's node registry.
const PG_MIGRATIONS: &[Migration] = &[
    (
        1,
        "001_entities",
        "CREATE TABLE entities (
             kind TEXT NOT NULL,
             id   TEXT NOT NULL,
             seq  BIGINT NOT NULL,
             doc  TEXT NOT NULL,
             PRIMARY KEY (kind, id)
         );
         CREATE INDEX entities_seq ON entities (seq);
         CREATE TABLE config_state (
             key   TEXT PRIMARY KEY,
             value BIGINT NOT NULL
         );
         INSERT INTO config_state (key, value) VALUES ('version', 0), ('next_seq', 1);",
    ),
    (
        2,
        "002_nodes",
        "CREATE TABLE strait_nodes (
             id             TEXT PRIMARY KEY,
             hostname       TEXT NOT NULL,
             version        TEXT NOT NULL,
             config_hash    TEXT NOT NULL,
             config_version BIGINT NOT NULL,
             last_seen      BIGINT NOT NULL
         );",
    ),
];

const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS strait_migrations (
    version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";

#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Pg(PgPool),
}

/// Runs `$body` with `$x` bound to the backend's pool (or transaction): the
/// body is written once and type-checked once per backend.
macro_rules! with_backend {
    (tx $on:expr, $x:ident => $body:expr) => {
        match $on {
            Tx::Sqlite($x) => $body,
            Tx::Pg($x) => $body,
        }
    };
    ($on:expr, $x:ident => $body:expr) => {
        match $on {
            Backend::Sqlite($x) => $body,
            Backend::Pg($x) => $body,
        }
    };
}

/// The applied migration versions, through any executor.
macro_rules! applied_versions {
    ($ex:expr) => {
        sqlx::query("SELECT version FROM strait_migrations ORDER BY version")
            .fetch_all($ex)
            .await?
            .iter()
            .map(|r| r.get::<i64, _>(0))
            .collect::<Vec<i64>>()
    };
}

/// A store handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
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
        sqlx::raw_sql(MIGRATIONS_TABLE).execute(&pool).await?;
        Ok(Store { backend: Backend::Sqlite(pool) })
    }

    /// A PostgreSQL store. Nothing is connected yet: the first query does,
    /// so a node can start (from its cache) while the database is down.
    pub fn open_postgres(opts: &PgSettings) -> Store {
        Store { backend: Backend::Pg(pg::pool(opts)) }
    }

    /// Several nodes may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    fn known(&self) -> &'static [Migration] {
        match self.backend {
            Backend::Sqlite(_) => SQLITE_MIGRATIONS,
            Backend::Pg(_) => PG_MIGRATIONS,
        }
    }

    /// Every known migration and whether it is applied.
    pub async fn migrations(&self) -> Result<Vec<MigrationStatus>, StoreError> {
        let applied: Vec<i64> = match &self.backend {
            Backend::Sqlite(pool) => applied_versions!(pool),
            Backend::Pg(pool) => {
                let exists: bool =
                    sqlx::query("SELECT to_regclass('strait_migrations') IS NOT NULL").fetch_one(pool).await?.get(0);
                if exists { applied_versions!(pool) } else { Vec::new() }
            }
        };
        status_of(self.known(), &applied)
    }

    /// Applies pending migrations; returns the names applied. On PostgreSQL
    /// every pending step runs in one transaction under a cluster-wide lock,
    /// so nodes migrating at once apply each step exactly once and a failure
    /// leaves the schema as it was.
    pub async fn migrate_up(&self) -> Result<Vec<&'static str>, StoreError> {
        let known = self.known();
        let mut tx = self.begin_tx().await?;
        if let Tx::Pg(t) = &mut tx {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(pg::MIGRATE_LOCK).execute(&mut **t).await?;
            // Checked first: `IF NOT EXISTS` alone would log a notice on every start.
            let exists: bool =
                sqlx::query("SELECT to_regclass('strait_migrations') IS NOT NULL").fetch_one(&mut **t).await?.get(0);
            if !exists {
                sqlx::query(MIGRATIONS_TABLE).execute(&mut **t).await?;
            }
        }
        let applied = with_backend!(tx &mut tx, t => applied_versions!(&mut **t));
        let mut done = Vec::new();
        for status in status_of(known, &applied)?.into_iter().filter(|s| !s.applied) {
            let Some((_, _, sql)) = known.iter().find(|m| m.0 == status.version) else { continue };
            with_backend!(tx &mut tx, t => {
                // One statement at a time (`raw_sql`'s future cannot be
                // spawned); the migrations hold no `;` inside literals.
                for statement in sql.split(';').map(str::trim).filter(|q| !q.is_empty()) {
                    sqlx::query(statement).execute(&mut **t).await?;
                }
                sqlx::query("INSERT INTO strait_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
                    .bind(status.version)
                    .bind(status.name)
                    .bind(unix_now())
                    .execute(&mut **t)
                    .await?;
            });
            done.push(status.name);
        }
        tx.commit().await?;
        for name in &done {
            tracing::info!(migration = name, "migration applied");
        }
        Ok(done)
    }

    /// Fails unless every migration is applied.
    pub async fn ensure_migrated(&self) -> Result<(), StoreError> {
        let pending = self.migrations().await?.iter().filter(|m| !m.applied).count();
        if pending > 0 { Err(StoreError::Pending(pending)) } else { Ok(()) }
    }

    async fn begin_tx(&self) -> Result<Tx, StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite(pool) => Tx::Sqlite(pool.begin().await?),
            Backend::Pg(pool) => Tx::Pg(pool.begin().await?),
        })
    }

    /// Every entity, in insertion order, and the configuration version.
    pub async fn load(&self) -> Result<(Vec<Row>, i64), StoreError> {
        // One snapshot for the rows and the version: under PostgreSQL's
        // default isolation each statement sees its own, and a write
        // committed between the two would pair old rows with the new
        // version — a node would then believe it is current when it is not.
        let mut tx = match &self.backend {
            Backend::Pg(pool) => Tx::Pg(pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?),
            Backend::Sqlite(_) => self.begin_tx().await?,
        };
        let loaded = load_rows(&mut tx).await?;
        tx.commit().await?;
        Ok(loaded)
    }

    /// The configuration version alone: what a node polls to learn that it
    /// is behind.
    pub async fn version(&self) -> Result<i64, StoreError> {
        let sql = "SELECT value FROM config_state WHERE key = 'version'";
        Ok(with_backend!(&self.backend, pool => sqlx::query(sql).fetch_one(pool).await?.get::<i64, _>(0)))
    }

    /// Starts a change: a transaction that, on PostgreSQL, holds the
    /// cluster-wide writer lock until it commits or is dropped.
    pub async fn begin_change(&self) -> Result<Change, StoreError> {
        // SQLite: take the write lock up front (waiting up to busy_timeout)
        // rather than upgrade a read later, which fails at once when another
        // process (`config db_import`) committed in between.
        let mut tx = match &self.backend {
            Backend::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Pg(pool) => Tx::Pg(pool.begin().await?),
        };
        if let Tx::Pg(t) = &mut tx {
            // A writer stuck elsewhere (a node frozen mid-change) must not
            // hold every other node's writes forever: give up with an error.
            sqlx::query("SET LOCAL lock_timeout = '10s'").execute(&mut **t).await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(pg::WRITE_LOCK).execute(&mut **t).await?;
        }
        Ok(Change { tx })
    }

    /// Answers when the database does (for `/status`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_backend!(&self.backend, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub async fn close(&self) {
        with_backend!(&self.backend, pool => pool.close().await);
    }
}

/// One change to the stored configuration, in one transaction.
#[derive(Debug)]
pub struct Change {
    tx: Tx,
}

impl Change {
    /// The stored configuration version, as this change sees it.
    pub async fn version(&mut self) -> Result<i64, StoreError> {
        read_state(&mut self.tx, "version").await
    }

    /// Every entity and the version (to catch up before editing).
    pub async fn load(&mut self) -> Result<(Vec<Row>, i64), StoreError> {
        load_rows(&mut self.tx).await
    }

    /// Writes changed rows and removes deleted ones, assigns insertion
    /// order to new rows (`seq == 0`), and bumps the configuration version;
    /// on PostgreSQL the other nodes are notified when this commits.
    /// Returns the new version.
    pub async fn write(&mut self, upserts: &mut [Row], deletes: &[(String, String)]) -> Result<i64, StoreError> {
        let mut next = read_state(&mut self.tx, "next_seq").await?;
        for row in upserts.iter_mut().filter(|r| r.seq == 0) {
            row.seq = next;
            next += 1;
        }
        let max_seq = upserts.iter().map(|r| r.seq).max().unwrap_or(0);
        with_backend!(tx &mut self.tx, t => {
            for (kind, id) in deletes {
                sqlx::query("DELETE FROM entities WHERE kind = $1 AND id = $2")
                    .bind(kind)
                    .bind(id)
                    .execute(&mut **t)
                    .await?;
            }
            for row in upserts.iter() {
                sqlx::query(
                    "INSERT INTO entities (kind, id, seq, doc) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (kind, id) DO UPDATE SET seq = excluded.seq, doc = excluded.doc",
                )
                .bind(&row.kind)
                .bind(&row.id)
                .bind(row.seq)
                .bind(row.doc.to_string())
                .execute(&mut **t)
                .await?;
            }
            sqlx::query("UPDATE config_state SET value = $1 WHERE key = 'next_seq' AND value < $1")
                .bind((max_seq + 1).max(next))
                .execute(&mut **t)
                .await?;
            sqlx::query("UPDATE config_state SET value = value + 1 WHERE key = 'version'").execute(&mut **t).await?;
        });
        let version = read_state(&mut self.tx, "version").await?;
        if let Tx::Pg(t) = &mut self.tx {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(pg::CHANNEL)
                .bind(version.to_string())
                .execute(&mut **t)
                .await?;
        }
        Ok(version)
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await
    }
}

#[derive(Debug)]
enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Pg(Transaction<'static, Postgres>),
}

impl Tx {
    async fn commit(self) -> Result<(), StoreError> {
        with_backend!(tx self, t => t.commit().await?);
        Ok(())
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn status_of(known: &'static [Migration], applied: &[i64]) -> Result<Vec<MigrationStatus>, StoreError> {
    let newest = known.last().map_or(0, |m| m.0);
    if let Some(&found) = applied.iter().max() {
        if found > newest {
            return Err(StoreError::NewerSchema { found, known: newest });
        }
    }
    Ok(known
        .iter()
        .map(|(version, name, _)| MigrationStatus { version: *version, name, applied: applied.contains(version) })
        .collect())
}

async fn load_rows(tx: &mut Tx) -> Result<(Vec<Row>, i64), StoreError> {
    let sql = "SELECT kind, id, seq, doc FROM entities ORDER BY seq";
    let raw: Vec<(String, String, i64, String)> = with_backend!(tx tx, t => {
        sqlx::query(sql)
            .fetch_all(&mut **t)
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    });
    let version = read_state(tx, "version").await?;
    let mut out = Vec::with_capacity(raw.len());
    for (kind, id, seq, text) in raw {
        let doc = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            kind: kind.clone(),
            id: id.clone(),
            reason: e.to_string(),
        })?;
        out.push(Row { kind, id, seq, doc });
    }
    Ok((out, version))
}

async fn read_state(tx: &mut Tx, key: &str) -> Result<i64, StoreError> {
    let sql = "SELECT value FROM config_state WHERE key = $1";
    Ok(with_backend!(tx tx, t => sqlx::query(sql).bind(key).fetch_one(&mut **t).await?.get::<i64, _>(0)))
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

    async fn write(store: &Store, upserts: &mut [Row], deletes: &[(String, String)]) -> i64 {
        let mut change = store.begin_change().await.unwrap();
        let v = change.write(upserts, deletes).await.unwrap();
        change.commit().await.unwrap();
        v
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

        let a = Row { kind: "services".into(), id: "a".into(), seq: 0, doc: json!({"name": "a"}) };
        let b = Row { kind: "routes".into(), id: "b".into(), seq: 0, doc: json!({"name": "b"}) };
        let mut rows = [a, b];
        assert_eq!(write(&store, &mut rows, &[]).await, 1);
        assert_eq!((rows[0].seq, rows[1].seq), (1, 2), "new rows get the next positions");
        let (loaded, version) = store.load().await.unwrap();
        assert_eq!((loaded, version), (rows.to_vec(), 1));
        assert_eq!(store.version().await.unwrap(), 1);

        let a2 = Row { doc: json!({"name": "a2"}), ..rows[0].clone() };
        assert_eq!(write(&store, &mut [a2.clone()], &[("routes".into(), "b".into())]).await, 2);
        // A dropped change writes nothing.
        {
            let mut change = store.begin_change().await.unwrap();
            let mut c = [Row { kind: "services".into(), id: "c".into(), seq: 0, doc: json!({}) }];
            change.write(&mut c, &[]).await.unwrap();
        }
        store.close().await;

        // Reopened: the data is still there, and positions keep growing.
        let store = Store::open_sqlite(&path).await.unwrap();
        let (loaded, version) = store.load().await.unwrap();
        assert_eq!((loaded, version), (vec![a2], 2));
        let mut c = [Row { kind: "services".into(), id: "c".into(), seq: 0, doc: json!({}) }];
        write(&store, &mut c, &[]).await;
        assert_eq!(c[0].seq, 3);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let path = temp_db("newer");
        let store = Store::open_sqlite(&path).await.unwrap();
        store.migrate_up().await.unwrap();
        let Backend::Sqlite(pool) = &store.backend else { unreachable!() };
        sqlx::query("INSERT INTO strait_migrations (version, name, applied_at) VALUES (99, 'future', 0)")
            .execute(pool)
            .await
            .unwrap();
        let err = store.ensure_migrated().await.unwrap_err().to_string();
        assert!(err.contains("version 99, newer than this binary knows (1)"), "{err}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
