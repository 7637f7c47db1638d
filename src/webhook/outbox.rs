//! The durable outbox of webhook deliveries: an SQLite database at
//! `<log dir>/webhooks/outbox.sqlite3` (WAL mode).
//!
//! A delivery is inserted (state `pending`) before anything is sent, updated after
//! each failed attempt (attempt count, next attempt time, last error), deleted when
//! delivered, and moved to state `dead` when it fails for good. Another process, or
//! the next start of this one, finds pending rows and resumes them.
//!
//! With `PM_FSYNC=always` SQLite runs with `synchronous=FULL` (a delivery survives a
//! power loss); otherwise `NORMAL` (it survives a crash of the process).

use super::WebhookError;
use crate::config::FsyncPolicy;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// State of a delivery in the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Failed for good; see the dead letters.
    Dead,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Dead => "dead",
        }
    }
}

/// One delivery: an event's signed body bound for one URL.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryRecord {
    /// Delivery id (UUID v4).
    pub id: String,
    /// The event's id (also the `webhook-id` header).
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The configuration variable that routed it.
    pub route: String,
    /// Destination URL.
    #[serde(skip)]
    pub url: String,
    /// The exact body to send.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Attempts made so far.
    pub attempt: u32,
    /// When the next attempt is due (Unix seconds).
    pub next_at: f64,
    /// When the delivery was created (Unix seconds).
    pub created_at: f64,
    /// Pending or dead.
    pub state: DeliveryState,
    /// The last failure (status or error), if any.
    pub last_error: Option<String>,
}

/// Handle to the outbox database.
pub struct Outbox {
    path: PathBuf,
    /// One connection; SQLite calls are short and synchronous, never held across an `.await`.
    conn: Mutex<Connection>,
}

const COLUMNS: &str =
    "id, event_id, event_type, route, url, body, attempt, next_at, created_at, state, last_error";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let state: String = r.get(9)?;
    Ok(DeliveryRecord {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        route: r.get(3)?,
        url: r.get(4)?,
        body: r.get(5)?,
        attempt: r.get(6)?,
        next_at: r.get(7)?,
        created_at: r.get(8)?,
        state: if state == "dead" {
            DeliveryState::Dead
        } else {
            DeliveryState::Pending
        },
        last_error: r.get(10)?,
    })
}

impl Outbox {
    /// Opens (creating) the outbox at `path`.
    pub fn open(path: impl Into<PathBuf>, fsync: FsyncPolicy) -> Result<Self, WebhookError> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| WebhookError::Outbox(format!("create {}: {e}", dir.display())))?;
        }
        let err = |e: rusqlite::Error| WebhookError::Outbox(format!("{}: {e}", path.display()));
        let conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        let sync = if fsync == FsyncPolicy::Always {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync};
             CREATE TABLE IF NOT EXISTS deliveries (
                id TEXT PRIMARY KEY, event_id TEXT NOT NULL, event_type TEXT NOT NULL,
                route TEXT NOT NULL, url TEXT NOT NULL, body BLOB NOT NULL,
                attempt INTEGER NOT NULL, next_at REAL NOT NULL, created_at REAL NOT NULL,
                state TEXT NOT NULL, last_error TEXT);
             CREATE INDEX IF NOT EXISTS deliveries_state ON deliveries(state, next_at);"
        ))
        .map_err(err)?;
        Ok(Outbox {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, WebhookError> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn).map_err(|e| WebhookError::Outbox(format!("{}: {e}", self.path.display())))
    }

    /// Stores a new delivery.
    pub fn insert(&self, r: &DeliveryRecord) -> Result<(), WebhookError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO deliveries ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    r.id, r.event_id, r.event_type, r.route, r.url, r.body, r.attempt, r.next_at,
                    r.created_at, r.state.as_str(), r.last_error
                ],
            )
            .map(|_| ())
        })
    }

    /// Records a failed attempt and when the next one is due.
    pub fn reschedule(
        &self,
        id: &str,
        attempt: u32,
        next_at: f64,
        last_error: &str,
    ) -> Result<(), WebhookError> {
        self.with(|c| {
            c.execute(
                "UPDATE deliveries SET attempt = ?2, next_at = ?3, last_error = ?4 WHERE id = ?1",
                params![id, attempt, next_at, last_error],
            )
            .map(|_| ())
        })
    }

    /// Moves a delivery to the dead letters.
    pub fn mark_dead(&self, id: &str, attempt: u32, last_error: &str) -> Result<(), WebhookError> {
        self.with(|c| {
            c.execute(
                "UPDATE deliveries SET state = 'dead', attempt = ?2, last_error = ?3 WHERE id = ?1",
                params![id, attempt, last_error],
            )
            .map(|_| ())
        })
    }

    /// Removes a delivered delivery.
    pub fn remove(&self, id: &str) -> Result<(), WebhookError> {
        self.with(|c| {
            c.execute("DELETE FROM deliveries WHERE id = ?1", params![id])
                .map(|_| ())
        })
    }

    /// Every delivery in `state`, oldest first.
    pub fn list(&self, state: DeliveryState) -> Result<Vec<DeliveryRecord>, WebhookError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE state = ?1 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map(params![state.as_str()], row)?;
            rows.collect()
        })
    }

    /// One delivery by id.
    pub fn get(&self, id: &str) -> Result<Option<DeliveryRecord>, WebhookError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM deliveries WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()
        })
    }

    /// Puts dead deliveries (all, or those of `event_id`) back to pending with a
    /// fresh retry budget, due now. Returns them.
    pub fn revive(
        &self,
        event_id: Option<&str>,
        now: f64,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        let dead: Vec<DeliveryRecord> = self
            .list(DeliveryState::Dead)?
            .into_iter()
            .filter(|r| event_id.is_none_or(|e| r.event_id == e))
            .collect();
        self.with(|c| {
            for r in &dead {
                c.execute(
                    "UPDATE deliveries SET state = 'pending', attempt = 0, next_at = ?2 WHERE id = ?1",
                    params![r.id, now],
                )?;
            }
            Ok(())
        })?;
        Ok(dead
            .into_iter()
            .map(|mut r| {
                r.state = DeliveryState::Pending;
                r.attempt = 0;
                r.next_at = now;
                r
            })
            .collect())
    }

    /// Makes every pending delivery due at `now` (instead of at its next retry time).
    pub fn make_due(&self, now: f64) -> Result<usize, WebhookError> {
        self.with(|c| {
            c.execute(
                "UPDATE deliveries SET next_at = ?1 WHERE state = 'pending' AND next_at > ?1",
                params![now],
            )
        })
    }

    /// How many of `ids` are still pending.
    pub fn count_pending(&self, ids: &[String]) -> Result<usize, WebhookError> {
        self.with(|c| {
            let mut st =
                c.prepare_cached("SELECT 1 FROM deliveries WHERE id = ?1 AND state = 'pending'")?;
            let mut n = 0;
            for id in ids {
                if st.exists(params![id])? {
                    n += 1;
                }
            }
            Ok(n)
        })
    }
}
