//! The durable outbox of webhook deliveries: an SQLite database at
//! `<log dir>/webhooks/outbox.sqlite3` (WAL mode).
//!
//! A delivery is inserted (state `pending`) before anything is sent, updated after
//! each failed attempt (attempt count, next attempt time, last error), deleted when
//! delivered, and moved to state `dead` when it fails for good. Another process, or
//! the next start of this one, finds pending rows and resumes them.
//!
//! Every delivery made also leaves its key — the event's id and the route —
//! in the table `delivery_keys` (kept [`KEY_RETENTION`]). An event dispatched
//! again after a crash ([`Event::redelivered`](crate::Event::redelivered))
//! makes no second delivery for a key that has one, pending, dead or delivered
//! (docs/architecture.md, invariant 3); a `replay` does, on purpose.
//!
//! With `PM_FSYNC=always` SQLite runs with `synchronous=FULL` (a delivery survives a
//! power loss); otherwise `NORMAL` (it survives a crash of the process).

use crate::config::FsyncPolicy;
use crate::webhook::error::WebhookError;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

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
    pub body: bytes::Bytes,
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
    /// The W3C `traceparent` of the event's trace when it was queued, if any: each
    /// attempt's span continues it.
    pub traceparent: Option<String>,
}

/// Handle to the outbox database.
///
/// Writes go to one writer thread that applies everything queued as one
/// transaction (group commit): an insert waits for its commit, the updates that
/// follow an attempt do not (losing one to a crash means an attempt is made
/// again: deliveries are at least once). Removals of delivered deliveries, alone,
/// are left to gather for up to 2 ms before their commit, which makes one commit
/// of a few hundred of them under load instead of one per handful. Reads use a
/// second connection (WAL lets readers and the writer work side by side).
pub struct Outbox {
    path: PathBuf,
    /// The reading connection; calls are short and never held across an `.await`.
    read: Mutex<Connection>,
    /// The writer thread's inbox; dropping it lets the thread finish.
    tx: Mutex<Option<std_mpsc::Sender<Op>>>,
    /// Operations sent to the writer so far; an operation's number is its position.
    sent: AtomicU64,
    /// Operations the writer has finished (committed or failed), in sending order.
    done: Arc<AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer thread, unparked by each operation someone waits for, so that a
    /// writer lingering over removals commits it at once.
    writer: std::thread::Thread,
}

type Reply = oneshot::Sender<Result<usize, String>>;

/// How long the key of a delivery is kept: an event dispatched again after a
/// crash later than this after its first delivery is delivered again.
pub const KEY_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

enum Op {
    /// New deliveries (of one event, to several endpoints: one transaction); with
    /// `once`, each only if its key has none yet. Answers how many were stored.
    Insert {
        records: Vec<DeliveryRecord>,
        once: bool,
        reply: Reply,
    },
    Reschedule {
        id: String,
        attempt: u32,
        next_at: f64,
        error: String,
    },
    Dead {
        id: String,
        attempt: u32,
        error: String,
    },
    Remove(String),
    Revive {
        ids: Vec<String>,
        now: f64,
        reply: Reply,
    },
    MakeDue {
        now: f64,
        reply: Reply,
    },
    Flush(Reply),
}

const COLUMNS: &str = "id, event_id, event_type, route, url, body, attempt, next_at, created_at, state, last_error, traceparent";

/// What [`Outbox::scan_pending`] does with a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Not this one.
    Skip,
    /// Return it.
    Take,
    /// End the scan.
    Stop,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    let state: String = r.get(9)?;
    Ok(DeliveryRecord {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        route: r.get(3)?,
        url: r.get(4)?,
        body: bytes::Bytes::from(r.get::<_, Vec<u8>>(5)?),
        attempt: r.get(6)?,
        next_at: r.get(7)?,
        created_at: r.get(8)?,
        state: if state == "dead" {
            DeliveryState::Dead
        } else {
            DeliveryState::Pending
        },
        last_error: r.get(10)?,
        traceparent: r.get(11)?,
    })
}

fn connect(path: &Path, fsync: FsyncPolicy) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let sync = if fsync == FsyncPolicy::Always {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={sync}; PRAGMA wal_autocheckpoint=4000;"
    ))?;
    Ok(conn)
}

fn apply(c: &Connection, op: &Op) -> rusqlite::Result<usize> {
    match op {
        Op::Insert { records, once, .. } => {
            let key = if *once {
                "INSERT OR IGNORE INTO delivery_keys (event_id, route, delivery_id, created_at) VALUES (?1, ?2, ?3, ?4)"
            } else {
                "INSERT OR REPLACE INTO delivery_keys (event_id, route, delivery_id, created_at) VALUES (?1, ?2, ?3, ?4)"
            };
            let mut stored = 0;
            for r in records {
                if c.prepare_cached(key)?.execute(params![
                    r.event_id,
                    r.route,
                    r.id,
                    r.created_at
                ])? == 0
                {
                    continue;
                }
                stored += c.prepare_cached(
                    &format!("INSERT INTO deliveries ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                )?.execute(params![
                    r.id, r.event_id, r.event_type, r.route, r.url, &r.body[..], r.attempt, r.next_at,
                    r.created_at, r.state.as_str(), r.last_error, r.traceparent
                ])?;
            }
            Ok(stored)
        }
        Op::Reschedule {
            id,
            attempt,
            next_at,
            error,
        } => c
            .prepare_cached(
                "UPDATE deliveries SET attempt = ?2, next_at = ?3, last_error = ?4 WHERE id = ?1",
            )?
            .execute(params![id, attempt, next_at, error]),
        Op::Dead { id, attempt, error } => c
            .prepare_cached(
                "UPDATE deliveries SET state = 'dead', attempt = ?2, last_error = ?3 WHERE id = ?1",
            )?
            .execute(params![id, attempt, error]),
        Op::Remove(id) => c
            .prepare_cached("DELETE FROM deliveries WHERE id = ?1")?
            .execute(params![id]),
        Op::Revive { ids, now, .. } => {
            let mut n = 0;
            for id in ids {
                n += c.prepare_cached("UPDATE deliveries SET state = 'pending', attempt = 0, next_at = ?2 WHERE id = ?1 AND state = 'dead'")?.execute(params![id, now])?;
            }
            Ok(n)
        }
        Op::MakeDue { now, .. } => c
            .prepare_cached(
                "UPDATE deliveries SET next_at = ?1 WHERE state = 'pending' AND next_at > ?1",
            )?
            .execute(params![now]),
        Op::Flush(_) => Ok(0),
    }
}

fn reply_of(op: Op) -> Option<Reply> {
    match op {
        Op::Insert { reply: r, .. }
        | Op::Revive { reply: r, .. }
        | Op::MakeDue { reply: r, .. }
        | Op::Flush(r) => Some(r),
        _ => None,
    }
}

/// How long the writer lets removals of delivered deliveries gather before it
/// commits them, unless [`LAZY_BATCH`] of them are there already. A crash loses
/// at most this much of them: deliveries are at least once, so such a loss only
/// means a delivery is sent again.
const LAZY_LINGER: std::time::Duration = std::time::Duration::from_millis(2);
/// How many lingering removals are enough for a commit of their own.
const LAZY_BATCH: usize = 256;

/// Whether someone waits for `op`'s commit.
fn awaited(op: &Op) -> bool {
    matches!(
        op,
        Op::Insert { .. } | Op::Revive { .. } | Op::MakeDue { .. } | Op::Flush(_)
    )
}

/// Takes what is queued, up to a batch's bound.
fn drain(rx: &std_mpsc::Receiver<Op>, batch: &mut Vec<Op>) {
    while batch.len() < 4096 {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// Waits up to [`LAZY_LINGER`] for more removals (parked: a removal does not wake
/// the writer, an operation someone waits for does), then takes what came.
fn linger(rx: &std_mpsc::Receiver<Op>, batch: &mut Vec<Op>) {
    std::thread::park_timeout(LAZY_LINGER);
    drain(rx, batch);
}

fn writer(conn: Connection, rx: std_mpsc::Receiver<Op>, path: PathBuf, done: Arc<AtomicU64>) {
    let mut batch = Vec::with_capacity(256);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        drain(&rx, &mut batch);
        if batch.iter().all(|op| matches!(op, Op::Remove(_))) && batch.len() < LAZY_BATCH {
            // Only removals of delivered deliveries, which nobody waits for: let
            // more gather, and commit them together; an operation someone waits
            // for (a new delivery) ends the wait at once.
            linger(&rx, &mut batch);
        }
        let mut results = Vec::with_capacity(batch.len());
        let committed = (|| -> rusqlite::Result<()> {
            let tx = conn.unchecked_transaction()?;
            for op in &batch {
                results.push(apply(&tx, op).map_err(|e| e.to_string()));
            }
            tx.commit()
        })();
        if let Err(e) = &committed {
            tracing::error!(path = %path.display(), error = %e, "webhook outbox commit failed");
        }
        let n = batch.len() as u64;
        for (i, op) in batch.drain(..).enumerate() {
            let result = match &committed {
                Ok(()) => results.get(i).cloned().unwrap_or(Ok(0)),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = &result
                && !awaited(&op)
            {
                tracing::error!(path = %path.display(), error = %e, "webhook outbox update failed");
            }
            if let Some(reply) = reply_of(op) {
                let _ = reply.send(result);
            }
        }
        done.fetch_add(n, Ordering::Release);
    }
}

impl Outbox {
    /// Opens (creating) the outbox at `path` and starts its writer thread.
    pub fn open(path: impl Into<PathBuf>, fsync: FsyncPolicy) -> Result<Self, WebhookError> {
        let path = path.into();
        if let Some(dir) = path.parent() {
            crate::private_files::create_dir_all(dir)
                .map_err(|e| WebhookError::outbox(format!("create {}", dir.display()), e))?;
        }
        // Created 0600 before SQLite opens it: its -wal and -shm take its mode.
        crate::private_files::touch(&path)
            .map_err(|e| WebhookError::outbox(format!("create {}", path.display()), e))?;
        crate::private_files::restrict_database(&path);
        let err = |e: rusqlite::Error| WebhookError::outbox(path.display().to_string(), e);
        let write = connect(&path, fsync).map_err(err)?;
        write
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS deliveries (
                    id TEXT PRIMARY KEY, event_id TEXT NOT NULL, event_type TEXT NOT NULL,
                    route TEXT NOT NULL, url TEXT NOT NULL, body BLOB NOT NULL,
                    attempt INTEGER NOT NULL, next_at REAL NOT NULL, created_at REAL NOT NULL,
                    state TEXT NOT NULL, last_error TEXT, traceparent TEXT) WITHOUT ROWID;
                 DROP INDEX IF EXISTS deliveries_state;
                 CREATE TABLE IF NOT EXISTS delivery_keys (
                    event_id TEXT NOT NULL, route TEXT NOT NULL, delivery_id TEXT NOT NULL,
                    created_at REAL NOT NULL, PRIMARY KEY (event_id, route)) WITHOUT ROWID;",
            )
            .map_err(err)?;
        // An outbox made before deliveries kept their trace gains the column.
        let has_trace: bool = write
            .prepare("SELECT 1 FROM pragma_table_info('deliveries') WHERE name = 'traceparent'")
            .and_then(|mut st| st.exists([]))
            .map_err(err)?;
        if !has_trace {
            write
                .execute_batch("ALTER TABLE deliveries ADD COLUMN traceparent TEXT;")
                .map_err(err)?;
        }
        // Keys older than the retention go (a scan; once per open).
        let horizon = crate::event::now_unix() - KEY_RETENTION.as_secs_f64();
        write
            .execute(
                "DELETE FROM delivery_keys WHERE created_at < ?1",
                params![horizon],
            )
            .map_err(err)?;
        let read = connect(&path, fsync).map_err(err)?;
        let (tx, rx) = std_mpsc::channel();
        let done = Arc::new(AtomicU64::new(0));
        let done2 = done.clone();
        let p = path.clone();
        let thread = std::thread::Builder::new()
            .name("pm-events-outbox".into())
            .spawn(move || writer(write, rx, p, done2))
            .map_err(|e| WebhookError::outbox("start the outbox writer", e))?;
        let writer_thread = thread.thread().clone();
        Ok(Outbox {
            writer: writer_thread,
            path,
            read: Mutex::new(read),
            tx: Mutex::new(Some(tx)),
            sent: AtomicU64::new(0),
            done,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `op` to the writer; returns its number (see [`is_done`](Self::is_done)).
    fn send(&self, op: Op) -> Result<u64, WebhookError> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = tx
            .as_ref()
            .ok_or_else(|| WebhookError::outbox_state("the outbox is closed"))?;
        // Numbered under the lock, so numbers follow the channel's order.
        let seq = self.sent.fetch_add(1, Ordering::AcqRel) + 1;
        tx.send(op)
            .map_err(|_| WebhookError::outbox_state("the outbox writer stopped"))?;
        Ok(seq)
    }

    /// How many operations the writer has finished: operation `n` is committed
    /// (or failed) when `n <= done_count()`.
    pub fn done_count(&self) -> u64 {
        self.done.load(Ordering::Acquire)
    }

    async fn call(&self, make: impl FnOnce(Reply) -> Op) -> Result<usize, WebhookError> {
        let (reply, wait) = oneshot::channel();
        self.send(make(reply))?;
        self.writer.unpark();
        match wait.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(WebhookError::outbox(self.path.display().to_string(), e)),
            Err(_) => Err(WebhookError::outbox_state("the outbox writer stopped")),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, WebhookError> {
        let conn = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn).map_err(|e| WebhookError::outbox(self.path.display().to_string(), e))
    }

    /// Stores a new delivery and its key; returns once it is committed.
    pub async fn insert(&self, r: &DeliveryRecord) -> Result<(), WebhookError> {
        let records = vec![r.clone()];
        self.call(|reply| Op::Insert {
            records,
            once: false,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Stores a new delivery unless its key (event id and route) has one
    /// already; returns the id of the delivery made before, if so.
    pub async fn insert_once(&self, r: &DeliveryRecord) -> Result<Option<String>, WebhookError> {
        let mut earlier = self.insert_all_once(std::slice::from_ref(r)).await?;
        Ok(earlier.pop().flatten())
    }

    /// Stores each of `records` unless its key has a delivery already, in one
    /// transaction; per record, `None` when stored, else the earlier delivery's id.
    pub async fn insert_all_once(
        &self,
        records: &[DeliveryRecord],
    ) -> Result<Vec<Option<String>>, WebhookError> {
        let batch = records.to_vec();
        let stored = self
            .call(|reply| Op::Insert {
                records: batch,
                once: true,
                reply,
            })
            .await?;
        if stored == records.len() {
            return Ok(vec![None; records.len()]);
        }
        self.with(|c| {
            let mut st = c.prepare_cached(
                "SELECT delivery_id FROM delivery_keys WHERE event_id = ?1 AND route = ?2",
            )?;
            records
                .iter()
                .map(|r| {
                    let id: Option<String> = st
                        .query_row(params![r.event_id, r.route], |row| row.get(0))
                        .optional()?;
                    Ok(id.filter(|id| *id != r.id))
                })
                .collect()
        })
    }

    /// Records a failed attempt and when the next one is due (committed shortly;
    /// returns the operation's number).
    pub fn reschedule(
        &self,
        id: &str,
        attempt: u32,
        next_at: f64,
        last_error: &str,
    ) -> Result<u64, WebhookError> {
        self.send(Op::Reschedule {
            id: id.into(),
            attempt,
            next_at,
            error: last_error.into(),
        })
    }

    /// Moves a delivery to the dead letters (committed shortly).
    pub fn mark_dead(&self, id: &str, attempt: u32, last_error: &str) -> Result<u64, WebhookError> {
        self.send(Op::Dead {
            id: id.into(),
            attempt,
            error: last_error.into(),
        })
    }

    /// Removes a delivered delivery (committed shortly).
    pub fn remove(&self, id: &str) -> Result<u64, WebhookError> {
        self.send(Op::Remove(id.into()))
    }

    /// Waits until everything sent to the writer so far is committed.
    pub async fn flush(&self) -> Result<(), WebhookError> {
        self.call(Op::Flush).await.map(|_| ())
    }

    /// Every delivery in `state`, oldest first.
    pub fn list(&self, state: DeliveryState) -> Result<Vec<DeliveryRecord>, WebhookError> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE state = ?1 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map(params![state.as_str()], row)?;
            rows.collect()
        })
    }

    /// Goes through the pending deliveries in id order (oldest first: ids are
    /// UUID v7), asking `pick` about each by id, route and URL, and returns those it
    /// takes. Only taken rows are decoded whole.
    pub fn scan_pending(
        &self,
        mut pick: impl FnMut(&str, &str, &str) -> Pick,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE state = 'pending' ORDER BY id"
            ))?;
            let mut rows = st.query([])?;
            let mut taken = Vec::new();
            while let Some(r) = rows.next()? {
                let text = |i: usize| -> rusqlite::Result<&str> {
                    r.get_ref(i)?.as_str().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(
                            i,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        )
                    })
                };
                match pick(text(0)?, text(3)?, text(4)?) {
                    Pick::Skip => {}
                    Pick::Take => taken.push(row(r)?),
                    Pick::Stop => break,
                }
            }
            Ok(taken)
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
    pub async fn revive(
        &self,
        event_id: Option<&str>,
        now: f64,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        let dead: Vec<DeliveryRecord> = match event_id {
            // Only that event's dead letters are read, not every one.
            Some(e) => self.with(|c| {
                let mut st = c.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM deliveries WHERE state = 'dead' AND event_id = ?1 ORDER BY created_at, id"
                ))?;
                let rows = st.query_map(params![e], row)?;
                rows.collect()
            })?,
            None => self.list(DeliveryState::Dead)?,
        };
        self.revive_records(dead, now).await
    }

    /// Puts the dead deliveries among `rows` back to pending, due `now`, with a fresh
    /// retry budget. Returns them as revived.
    pub async fn revive_records(
        &self,
        rows: Vec<DeliveryRecord>,
        now: f64,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        let dead: Vec<DeliveryRecord> = rows
            .into_iter()
            .filter(|r| r.state == DeliveryState::Dead)
            .collect();
        let ids = dead.iter().map(|r| r.id.clone()).collect();
        self.call(|reply| Op::Revive { ids, now, reply }).await?;
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

    /// The deliveries of `route` in `state`, created from `since` to `until`, oldest first.
    pub fn list_route(
        &self,
        route: &str,
        state: DeliveryState,
        since: f64,
        until: f64,
    ) -> Result<Vec<DeliveryRecord>, WebhookError> {
        self.with(|c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM deliveries WHERE route = ?1 AND state = ?2 AND created_at >= ?3 AND created_at <= ?4 ORDER BY id"
            ))?;
            let rows = st.query_map(params![route, state.as_str(), since, until], row)?;
            rows.collect()
        })
    }

    /// Makes every pending delivery due at `now` (instead of at its next retry time).
    pub async fn make_due(&self, now: f64) -> Result<usize, WebhookError> {
        self.call(|reply| Op::MakeDue { now, reply }).await
    }

    /// How many of `ids` are pending and how many dead (one query, whatever the number of ids).
    pub fn count_states(&self, ids: &[String]) -> Result<(usize, usize), WebhookError> {
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        self.with(|c| {
            let mut st = c.prepare_cached("SELECT id, state FROM deliveries")?;
            let mut rows = st.query([])?;
            let (mut pending, mut dead) = (0, 0);
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                if wanted.contains(id.as_str()) {
                    let state: String = r.get(1)?;
                    if state == "dead" {
                        dead += 1;
                    } else {
                        pending += 1;
                    }
                }
            }
            Ok((pending, dead))
        })
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Closing the inbox lets the writer commit what is queued and end.
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = t.join();
        }
    }
}
