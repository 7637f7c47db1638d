//! Where managed endpoints are kept: one trait, two stores.
//!
//! - [`SqliteStore`]: `<log dir>/webhooks/endpoints.sqlite3` (the embedded default).
//!   Other processes on the same log directory see a change at their next look
//!   (`PRAGMA data_version` changes when another connection commits).
//! - [`KvStore`](super::kv::KvStore): the JetStream KV bucket `PM_ENDPOINTS`, shared by
//!   every node of a NATS cluster; its watch tells each node of a change at once.

use super::error::EndpointError;
use super::keys::Key;
use super::model::Endpoint;
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// An endpoint with its keys, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEndpoint {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its signing keys, the current one first.
    pub keys: Vec<Key>,
}

/// A place that keeps managed endpoints.
#[async_trait]
pub trait EndpointStore: Send + Sync + 'static {
    /// Every stored endpoint.
    async fn load(&self) -> Result<Vec<StoredEndpoint>, EndpointError>;
    /// The stored endpoint `id`, if there is one.
    async fn get(&self, id: &str) -> Result<Option<StoredEndpoint>, EndpointError>;
    /// Stores `e` (replacing the one with its id).
    async fn put(&self, e: &StoredEndpoint) -> Result<(), EndpointError>;
    /// Removes the endpoint `id`; `false` if there was none.
    async fn remove(&self, id: &str) -> Result<bool, EndpointError>;
    /// Returns `true` as soon as another process may have changed the set, `false`
    /// after `max` without a sign of change.
    async fn changed(&self, max: Duration) -> bool;
    /// Where the endpoints are, for messages.
    fn describe(&self) -> String;
}

/// The embedded store: one SQLite table in `<log dir>/webhooks/endpoints.sqlite3`.
pub struct SqliteStore {
    path: PathBuf,
    /// The one connection; calls are short and rare (endpoint changes, a poll of
    /// `data_version`), so they run inline under this lock.
    conn: Mutex<Connection>,
    /// The last `data_version` seen by `changed`.
    seen: Mutex<i64>,
}

fn sql_err(path: &Path) -> impl Fn(rusqlite::Error) -> EndpointError + '_ {
    move |e| EndpointError::store(format!("endpoint store {}", path.display()), e)
}

impl SqliteStore {
    /// Opens (creating) the store under `log_dir`.
    pub fn open(log_dir: &Path) -> Result<Self, EndpointError> {
        let dir = log_dir.join("webhooks");
        crate::private_files::create_dir_all(&dir)
            .map_err(|e| EndpointError::store(format!("create {}", dir.display()), e))?;
        let path = dir.join("endpoints.sqlite3");
        // Created 0600 before SQLite opens it: its -wal and -shm take its mode.
        crate::private_files::touch(&path)
            .map_err(|e| EndpointError::store(format!("create {}", path.display()), e))?;
        let conn = Connection::open(&path).map_err(sql_err(&path))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql_err(&path))?;
        // Two processes creating the file at once: switching a new database to
        // WAL needs it alone, and SQLite answers `database is locked` at once
        // rather than through the busy handler, so that step is tried again.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match conn.execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS endpoints (id TEXT PRIMARY KEY, doc TEXT NOT NULL) WITHOUT ROWID;",
            ) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(sql_err(&path)(e)),
            }
        }
        crate::private_files::restrict_database(&path);
        let version = data_version(&conn).map_err(sql_err(&path))?;
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
            seen: Mutex::new(version),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `e` is SQLite's "busy" or "locked": another connection holds the lock.
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

fn data_version(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row("PRAGMA data_version", [], |r| r.get(0))
}

#[async_trait]
impl EndpointStore for SqliteStore {
    async fn load(&self) -> Result<Vec<StoredEndpoint>, EndpointError> {
        let c = self.conn();
        let err = sql_err(&self.path);
        let mut st = c
            .prepare_cached("SELECT id, doc FROM endpoints ORDER BY id")
            .map_err(&err)?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(&err)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, doc) = row.map_err(&err)?;
            match serde_json::from_str::<StoredEndpoint>(&doc) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::error!(endpoint = %id, error = %e, path = %self.path.display(), "unreadable endpoint skipped")
                }
            }
        }
        Ok(out)
    }

    async fn get(&self, id: &str) -> Result<Option<StoredEndpoint>, EndpointError> {
        let c = self.conn();
        let err = sql_err(&self.path);
        let doc: Option<String> = c
            .prepare_cached("SELECT doc FROM endpoints WHERE id = ?1")
            .map_err(&err)?
            .query_row(params![id], |r| r.get(0))
            .optional()
            .map_err(&err)?;
        doc.map(|d| {
            serde_json::from_str(&d).map_err(|e| {
                EndpointError::store(format!("endpoint {id} in {}", self.path.display()), e)
            })
        })
        .transpose()
    }

    async fn put(&self, e: &StoredEndpoint) -> Result<(), EndpointError> {
        let doc = serde_json::to_string(e)
            .map_err(|err| EndpointError::store("encode an endpoint", err))?;
        self.conn()
            .execute(
                "INSERT INTO endpoints (id, doc) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
                params![e.endpoint.id, doc],
            )
            .map_err(sql_err(&self.path))?;
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<bool, EndpointError> {
        let n = self
            .conn()
            .execute("DELETE FROM endpoints WHERE id = ?1", params![id])
            .map_err(sql_err(&self.path))?;
        Ok(n > 0)
    }

    async fn changed(&self, max: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let v = data_version(&self.conn()).optional().ok().flatten();
            if let Some(v) = v {
                let mut seen = self
                    .seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if *seen != v {
                    *seen = v;
                    return true;
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(200))).await;
        }
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
