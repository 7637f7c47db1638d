//! The main event log: `<log dir>/events/events_YYYYMMDD.log`, written ahead
//! of dispatch.
//!
//! # Format
//!
//! JSON Lines, one accepted event per line, exactly the event's JSON form:
//!
//! ```text
//! {"type":"file_change","data":{...},"timestamp":1642248000.123,"event_id":"<uuid v4>","source":"personal-manager"}
//! ```
//!
//! - `type` (string): the event type; `data` (object): the payload;
//!   `timestamp` (number): Unix seconds with fraction, when the event was
//!   created; `event_id` (string): UUID v4; `source` (string): who published it.
//! - `YYYYMMDD` is the UTC date at which the line was **written**; the file
//!   changes at UTC midnight. Lines of one publisher appear in its publish order.
//!
//! # Writing
//!
//! One writer thread owns the file. Publishers hand it their encoded lines
//! and wait; it takes everything waiting as one batch, writes the batch with one
//! `write(2)`, and then releases the publishers (group commit). What happens to
//! durability is the [`FsyncPolicy`]: `never`, `batch` (an `fdatasync` at most
//! every 100 ms while lines are unsynced) or `always` (an `fdatasync` per batch
//! before its publishers return). A failed write is truncated away and reported
//! to every publisher of the batch: nothing half-written stays behind.
//!
//! # Reading
//!
//! [`read_day`] and [`read_range`] decode lines with serde and skip (with a
//! warning) any line that does not decode, such as a torn last line.

use crate::config::{BATCH_FSYNC_INTERVAL, FsyncPolicy};
use crate::error::LogError;
use crate::event::Event;
use crate::jsonl::{JsonlReader, append_all, open_append};
use chrono::{DateTime, NaiveDate, Utc};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Most lines the writer takes into one batch.
const MAX_BATCH_LINES: usize = 4096;

/// The path of the event log of `day` under `log_dir`.
pub fn day_path(log_dir: &Path, day: NaiveDate) -> PathBuf {
    log_dir
        .join("events")
        .join(format!("events_{}.log", day.format("%Y%m%d")))
}

/// Today's UTC date.
pub fn today() -> NaiveDate {
    Utc::now().date_naive()
}

enum Msg {
    Append {
        buf: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread of the main event log.
pub struct EventLog {
    dir: PathBuf,
    /// The writer thread's inbox. Unbounded: the bus's capacity permits,
    /// taken before an event reaches the log, bound it.
    tx: std_mpsc::Sender<Msg>,
}

impl EventLog {
    /// Creates `<log_dir>/events/`, opens today's file and starts the writer thread.
    pub fn open(log_dir: impl Into<PathBuf>, fsync: FsyncPolicy) -> Result<EventLog, LogError> {
        let dir = log_dir.into();
        let day = today();
        let path = day_path(&dir, day);
        let (file, len) = open_append(&path)?;
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            dir: dir.clone(),
            fsync,
            day,
            path,
            file,
            len,
            unsynced: false,
            last_sync: Instant::now(),
        };
        std::thread::Builder::new()
            .name("pm-events-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::io("start the writer thread for", &dir, e))?;
        Ok(EventLog { dir, tx })
    }

    /// The log directory this log writes under.
    pub fn log_dir(&self) -> &Path {
        &self.dir
    }

    /// Today's log file path.
    pub fn current_path(&self) -> PathBuf {
        day_path(&self.dir, today())
    }

    /// Appends one event; returns once its line is written (and synced under `always`).
    pub async fn append(&self, event: &Event) -> Result<(), LogError> {
        let mut buf = Vec::with_capacity(256);
        encode_line(event, &mut buf);
        self.submit(buf).await
    }

    /// Appends several events as consecutive lines with one hand-off to the writer.
    pub async fn append_batch(&self, events: &[Event]) -> Result<(), LogError> {
        let mut buf = Vec::with_capacity(256 * events.len());
        for e in events {
            encode_line(e, &mut buf);
        }
        self.submit(buf).await
    }

    async fn submit(&self, buf: Vec<u8>) -> Result<(), LogError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Append { buf, done })
            .map_err(|_| LogError::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(LogError::io(
                "append to",
                self.current_path(),
                std::io::Error::other(msg),
            )),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// Writes and syncs everything handed over so far, then stops the writer thread.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn encode_line(event: &Event, buf: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *buf, event).is_err() {
        // Unreachable for a validated event (finite timestamp); keep the line whole.
        buf.extend_from_slice(event.to_value().to_string().as_bytes());
    }
    buf.push(b'\n');
}

struct Writer {
    dir: PathBuf,
    fsync: FsyncPolicy,
    day: NaiveDate,
    path: PathBuf,
    file: File,
    len: u64,
    unsynced: bool,
    last_sync: Instant,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        let mut batch: Vec<Msg> = Vec::with_capacity(64);
        let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
        loop {
            let first = if self.unsynced && self.fsync == FsyncPolicy::Batch {
                let wait = BATCH_FSYNC_INTERVAL.saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(m) => m,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.sync();
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            batch.push(first);
            while batch.len() < MAX_BATCH_LINES {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut close = None;
            out.clear();
            let mut waiters = Vec::with_capacity(batch.len());
            for m in batch.drain(..) {
                match m {
                    Msg::Append { buf, done } if close.is_none() => {
                        out.extend_from_slice(&buf);
                        waiters.push(done);
                    }
                    Msg::Append { done, .. } => {
                        let _ = done.send(Err("the event log is closing".into()));
                    }
                    Msg::Close(tx) => close = Some(tx),
                }
            }
            let result = if out.is_empty() {
                Ok(())
            } else {
                self.write(&out)
            };
            let result = result.map_err(|e| e.to_string());
            for w in waiters {
                let _ = w.send(result.clone());
            }
            if self.fsync == FsyncPolicy::Batch && self.last_sync.elapsed() >= BATCH_FSYNC_INTERVAL
            {
                self.sync();
            }
            if let Some(tx) = close {
                self.sync();
                let _ = tx.send(());
                return;
            }
        }
        self.sync();
    }

    fn write(&mut self, buf: &[u8]) -> Result<(), LogError> {
        let day = today();
        if day != self.day {
            self.sync();
            let path = day_path(&self.dir, day);
            let (file, len) = open_append(&path)?;
            self.file = file;
            self.len = len;
            self.path = path;
            self.day = day;
        }
        append_all(&mut self.file, &mut self.len, buf, &self.path)?;
        self.unsynced = true;
        if self.fsync == FsyncPolicy::Always {
            self.file
                .sync_data()
                .map_err(|e| LogError::io("sync", &self.path, e))?;
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    fn sync(&mut self) {
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                tracing::error!(path = %self.path.display(), error = %e, "event log fdatasync failed");
            }
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
    }
}

/// The dates of the event log files under `log_dir`, oldest first.
pub fn days(log_dir: &Path) -> Vec<NaiveDate> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(log_dir.join("events")) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if let Some(d) = name
                .to_str()
                .and_then(|n| n.strip_prefix("events_"))
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
            {
                out.push(d);
            }
        }
    }
    out.sort();
    out
}

/// The events of one day's file, in file order; a missing file reads as empty.
pub fn read_day(log_dir: &Path, day: NaiveDate) -> Result<Vec<Event>, LogError> {
    let path = day_path(log_dir, day);
    if !path.exists() {
        return Ok(Vec::new());
    }
    Ok(JsonlReader::<Event>::open(&path)?.collect())
}

/// The events whose `timestamp` is in `[since, until)` (Unix seconds), from
/// every day file that can hold them (a day either side is read too, since a
/// line's file is the day it was written), in file order.
pub fn read_range(log_dir: &Path, since: f64, until: f64) -> Result<Vec<Event>, LogError> {
    let to_day = |t: f64| {
        DateTime::<Utc>::from_timestamp(t.clamp(0.0, 253_402_300_799.0) as i64, 0)
            .map(|d| d.date_naive())
            .unwrap_or_default()
    };
    let first = to_day(since).pred_opt().unwrap_or(NaiveDate::MIN);
    let last = to_day(until).succ_opt().unwrap_or(NaiveDate::MAX);
    let mut out = Vec::new();
    for day in days(log_dir)
        .into_iter()
        .filter(|d| *d >= first && *d <= last)
    {
        out.extend(
            read_day(log_dir, day)?
                .into_iter()
                .filter(|e| e.timestamp >= since && e.timestamp < until),
        );
    }
    Ok(out)
}
