//! PostgreSQL specifics: the connection from Kong's `pg_*` settings,
//! the cluster-wide locks, change notifications and the node registry.

use std::time::Duration;

use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgSslMode};
use strait_config::PgSettings;

use crate::{Backend, Store, StoreError};

/// The NOTIFY channel a write announces its new version on.
pub(crate) const CHANNEL: &str = "strait_config";
/// Advisory lock keys (arbitrary, fixed): one for writers, one for migrations.
pub(crate) const WRITE_LOCK: i64 = 0x5354_5241_4954_0001;
pub(crate) const MIGRATE_LOCK: i64 = 0x5354_5241_4954_0002;

/// How long a query waits for a connection before the database counts as
/// unreachable: bounds every Admin API write and `/status` during an outage.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) fn pool(o: &PgSettings) -> PgPool {
    let mut opts = PgConnectOptions::new()
        .host(&o.host)
        .port(o.port)
        .username(&o.user)
        .database(&o.database)
        .application_name("strait")
        .ssl_mode(match (o.ssl, o.ssl_verify) {
            (false, _) => PgSslMode::Disable,
            (true, false) => PgSslMode::Require,
            (true, true) => PgSslMode::VerifyFull,
        });
    if let Some(p) = &o.password {
        opts = opts.password(p);
    }
    // A node that freezes inside a change must not keep the writer lock:
    // the server ends such a session, and with it the lock.
    opts = opts.options([("idle_in_transaction_session_timeout", "30s")]);
    PgPoolOptions::new()
        .max_connections(8)
        .min_connections(0)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // A server restart leaves dead connections in the pool: test each
        // before use so the first query after an outage does not fail.
        .test_before_acquire(true)
        .connect_lazy_with(opts)
}

/// Errors that mean "no database to talk to" rather than "the database
/// said no".
pub(crate) fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        // TLS failures are not here: they are `pg_ssl` settings to fix.
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        // Class 57: the server is shutting down or starting up; class 08:
        // connection exceptions.
        sqlx::Error::Database(d) => d.code().is_some_and(|c| c.starts_with("57") || c.starts_with("08")),
        _ => false,
    }
}

/// A node in the cluster registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: String,
    pub hostname: String,
    /// The node's Strait version.
    pub version: String,
    pub config_hash: String,
    pub config_version: i64,
    /// Unix seconds of the node's last heartbeat, by the database's clock
    /// (ignored when recording one).
    pub last_seen: i64,
}

impl Store {
    fn pg(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Pg(p) => Some(p),
            Backend::Sqlite(_) => None,
        }
    }

    /// Records that `node` is alive and what it runs (PostgreSQL only).
    pub async fn heartbeat(&self, node: &NodeRow) -> Result<(), StoreError> {
        let Some(pool) = self.pg() else { return Ok(()) };
        sqlx::query(
            "INSERT INTO strait_nodes (id, hostname, version, config_hash, config_version, last_seen)
             VALUES ($1, $2, $3, $4, $5, extract(epoch FROM now())::bigint)
             ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, version = excluded.version,
                 config_hash = excluded.config_hash, config_version = excluded.config_version,
                 last_seen = excluded.last_seen",
        )
        .bind(&node.id)
        .bind(&node.hostname)
        .bind(&node.version)
        .bind(&node.config_hash)
        .bind(node.config_version)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Nodes seen in the last `within` seconds, newest first (PostgreSQL
    /// only; empty on SQLite). Rows older than a day are removed. Times are
    /// the database's clock, so nodes' clocks need not agree.
    pub async fn nodes(&self, within: i64) -> Result<Vec<NodeRow>, StoreError> {
        let Some(pool) = self.pg() else { return Ok(Vec::new()) };
        // Best effort: a failure here only leaves old rows a while longer.
        let _ = sqlx::query("DELETE FROM strait_nodes WHERE last_seen < extract(epoch FROM now())::bigint - 86400")
            .execute(pool)
            .await;
        let rows = sqlx::query(
            "SELECT id, hostname, version, config_hash, config_version, last_seen FROM strait_nodes
             WHERE last_seen >= extract(epoch FROM now())::bigint - $1 ORDER BY last_seen DESC, id",
        )
        .bind(within)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| NodeRow {
                id: r.get(0),
                hostname: r.get(1),
                version: r.get(2),
                config_hash: r.get(3),
                config_version: r.get(4),
                last_seen: r.get(5),
            })
            .collect())
    }

    /// Subscribes to change notifications (PostgreSQL only: `None` on SQLite).
    pub async fn events(&self) -> Result<Option<ConfigEvents>, StoreError> {
        let Some(pool) = self.pg() else { return Ok(None) };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(ConfigEvents { listener }))
    }
}

/// Notifications of new configuration versions written by any node.
#[derive(Debug)]
pub struct ConfigEvents {
    listener: PgListener,
}

impl ConfigEvents {
    /// The next announced version. `Ok(None)`: the connection was lost and
    /// notifications may have been missed (the caller should re-read the
    /// version); `Err`: the listener is unusable and must be replaced.
    pub async fn next(&mut self) -> Result<Option<i64>, StoreError> {
        match self.listener.try_recv().await? {
            Some(n) => Ok(Some(n.payload().parse().unwrap_or(0))),
            None => Ok(None),
        }
    }
}
