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
//!   created; `event_id` (string): a UUID, or the id a caller supplied; `source` (string): who published it.
//! - `YYYYMMDD` is the UTC date at which the line was **written**; the file
//!   changes at UTC midnight. Lines of one publisher appear in its publish order.
//!
//! # Writing
//!
//! Group commit without a writer thread. A publisher that finds the flush lock
//! free and no line waiting writes its own line at once, from a reused buffer:
//! no hand-off, no wake-up. One that finds the lock taken appends its encoded
//! line to a shared buffer and waits; the lock's holder, after its own write,
//! writes *everything* buffered with one `write(2)` and wakes the publishers
//! whose lines it wrote. Concurrent publishers thus share writes. Durability follows the [`FsyncPolicy`]: `never`;
//! `batch` (a background thread calls `fdatasync` at most every 100 ms while
//! lines are unsynced); `always` (the flusher calls `fdatasync` before it wakes
//! the publishers of the batch). A failed write is truncated away and reported
//! to every publisher of the batch: nothing half-written stays behind.
//!
//! # Reading
//!
//! [`read_day`] and [`read_range`] decode lines with serde and skip (with a
//! warning) any line that does not decode, such as a torn last line.

use crate::config::{BATCH_FSYNC_INTERVAL, FsyncPolicy};
use crate::error::LogError;
use crate::event::Event;
use crate::jsonl::{JsonlReader, append_holding_lock, open_append};
use chrono::{DateTime, NaiveDate, Utc};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

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

/// Written-or-failed news for one publisher: `Err` carries the write error's
/// kind (so a full disk stays recognisable) and its text.
type Done = oneshot::Sender<Result<(), (std::io::ErrorKind, Arc<str>)>>;

/// Lines waiting to be written, and who waits for them.
#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// One entry per publisher whose lines are in `buf`, told when they are written.
    waiters: Vec<Done>,
    closed: bool,
}

/// The open file; held (locked) by the one publisher writing a batch.
struct FileState {
    day: NaiveDate,
    path: PathBuf,
    file: Arc<File>,
    /// The file's length as this process knows it: read when the `flock` is
    /// taken (other processes may have appended), then counted while held.
    len: u64,
    /// The fast path's line buffer, reused.
    scratch: Vec<u8>,
    /// Since when this process holds the file's `flock` (see [`HOLD_MAX`]).
    locked_since: Option<Instant>,
}

/// Longest time a writer keeps the log file's `flock` while it goes on writing.
///
/// Other processes append to the same file, so every write is made under the
/// file's `flock` (see `jsonl::append_all`). Taking and releasing it costs two
/// system calls, as much as the write itself; so a writer keeps it across its
/// writes and lets go after this long, and the background thread lets go of it
/// within [`RELEASE_TICK`] once the writer is idle. Another process waits at
/// most about that long for its turn.
const HOLD_MAX: Duration = Duration::from_millis(1);

/// How often the background thread releases a lock held by an idle writer.
const RELEASE_TICK: Duration = Duration::from_millis(10);

impl FileState {
    fn unlock(&mut self) {
        if self.locked_since.take().is_some()
            && let Err(e) = self.file.unlock()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot unlock the event log");
        }
    }
}

struct Shared {
    dir: PathBuf,
    fsync: FsyncPolicy,
    pending: Mutex<Pending>,
    /// The flush lock: its holder writes batches. A std mutex: it is only ever
    /// held across a synchronous `write(2)`, never across an `.await`.
    file: Mutex<FileState>,
    /// Set when a line is written and not yet synced; the sync thread clears it.
    dirty: AtomicBool,
    /// The current file, for the sync thread: it must never take the flush
    /// lock (a publisher finding that lock taken counts on its holder to write).
    sync_file: Mutex<Arc<File>>,
    /// The byte ranges this process wrote, for recovery (see [`EventLog::own_ranges`]).
    own: Mutex<Vec<OwnRange>>,
}

/// Bytes `start..end` of the log file of `day`, written by this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnRange {
    /// The day of the file.
    pub day: NaiveDate,
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// Handle to the main event log. Cheap to share behind an `Arc`.
pub struct EventLog {
    shared: Arc<Shared>,
    /// Stops the background sync thread (policy `batch`) when dropped or closed.
    sync_stop: Mutex<Option<std_mpsc::Sender<()>>>,
}

impl EventLog {
    /// Creates `<log_dir>/events/` and opens today's file.
    pub fn open(log_dir: impl Into<PathBuf>, fsync: FsyncPolicy) -> Result<EventLog, LogError> {
        let dir = log_dir.into();
        let day = today();
        let path = day_path(&dir, day);
        let (file, len) = open_append(&path)?;
        let file = Arc::new(file);
        let shared = Arc::new(Shared {
            dir,
            fsync,
            pending: Mutex::new(Pending::default()),
            sync_file: Mutex::new(file.clone()),
            file: Mutex::new(FileState {
                day,
                path,
                file,
                len,
                scratch: Vec::new(),
                locked_since: None,
            }),
            dirty: AtomicBool::new(false),
            own: Mutex::new(Vec::new()),
        });
        // The background thread: lets go of an idle writer's lock, and under the
        // `batch` policy syncs at most every BATCH_FSYNC_INTERVAL.
        let (tx, rx) = std_mpsc::channel::<()>();
        let s = shared.clone();
        let sync_every = (BATCH_FSYNC_INTERVAL.as_millis() / RELEASE_TICK.as_millis()).max(1);
        std::thread::Builder::new()
            .name("pm-events-log".into())
            .spawn(move || {
                let mut tick = 0u128;
                while let Err(std_mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(RELEASE_TICK) {
                    s.release_idle_lock();
                    tick += 1;
                    if s.fsync == FsyncPolicy::Batch && tick.is_multiple_of(sync_every) {
                        s.sync();
                    }
                }
            })
            .map_err(|e| LogError::io("start the background thread for", &shared.dir, e))?;
        let sync_stop = Some(tx);
        Ok(EventLog {
            shared,
            sync_stop: Mutex::new(sync_stop),
        })
    }

    /// The log directory this log writes under.
    pub fn log_dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Today's log file path.
    pub fn current_path(&self) -> PathBuf {
        day_path(&self.shared.dir, today())
    }

    /// The byte ranges of the log files this process wrote since it opened
    /// the log. A range is noted before its bytes are written, so a caller that
    /// reads a file's length and then calls this sees every line of this
    /// process below that length (and maybe one being written).
    pub fn own_ranges(&self) -> Vec<OwnRange> {
        lock(&self.shared.own).clone()
    }

    /// Appends one event; returns once its line is written (and synced under `always`).
    pub async fn append(&self, event: &Event) -> Result<(), LogError> {
        self.submit(|buf| encode_line(event, buf)).await
    }

    /// Appends several events as consecutive lines, written together.
    pub async fn append_batch(&self, events: &[Event]) -> Result<(), LogError> {
        self.submit(|buf| events.iter().for_each(|e| encode_line(e, buf)))
            .await
    }

    /// Encodes into the shared buffer (no copy of its own), then writes or
    /// waits for the writer.
    async fn submit(&self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<(), LogError> {
        let s = &*self.shared;
        // Fast path: the flush lock is free and nobody waits, so this publisher
        // writes its own lines now, with no buffer hand-off and no wake-up.
        if let Ok(mut f) = s.file.try_lock() {
            let idle = {
                let p = lock(&s.pending);
                if p.closed {
                    return Err(LogError::Closed);
                }
                p.buf.is_empty()
            };
            if idle {
                let mut line = std::mem::take(&mut f.scratch);
                encode(&mut line);
                let result = s.write(&mut f, &line);
                if let Err(e) = &result {
                    tracing::error!(error = %crate::error::chain(e), "event log write failed; the event is refused");
                }
                line.clear();
                f.scratch = line;
                drop(f);
                // Lines appended while this one was written wait for a flusher.
                s.flush_all();
                return result;
            }
        }
        let (done, wait) = oneshot::channel();
        {
            let mut p = lock(&s.pending);
            if p.closed {
                return Err(LogError::Closed);
            }
            encode(&mut p.buf);
            p.waiters.push(done);
        }
        s.flush_all();
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((kind, msg))) => Err(LogError::io(
                "append to",
                self.current_path(),
                std::io::Error::new(kind, msg.to_string()),
            )),
            Err(_) => Err(LogError::Closed),
        }
    }

    /// Writes and syncs everything appended so far; later appends fail with
    /// [`LogError::Closed`].
    pub async fn close(&self) {
        lock(&self.shared.pending).closed = true;
        self.shared.flush_all();
        if let Some(tx) = lock(&self.sync_stop).take() {
            let _ = tx.send(());
        }
        lock(&self.shared.file).unlock();
        self.shared.sync();
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.shared.flush_all();
        if let Some(tx) = lock(&self.sync_stop).take() {
            let _ = tx.send(());
        }
        lock(&self.shared.file).unlock();
        self.shared.sync();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Writes what is pending unless another caller holds the flush lock — in
    /// which case that caller writes it: it looks again after letting go.
    fn flush_all(&self) {
        loop {
            let Ok(mut f) = self.file.try_lock() else {
                return;
            };
            loop {
                let (buf, waiters) = {
                    let mut p = lock(&self.pending);
                    if p.buf.is_empty() {
                        break;
                    }
                    (std::mem::take(&mut p.buf), std::mem::take(&mut p.waiters))
                };
                let result = self.write(&mut f, &buf).map_err(|e| {
                    tracing::error!(error = %crate::error::chain(&e), "event log write failed; the events of this batch are refused");
                    (e.io_kind(), Arc::<str>::from(e.root_message()))
                });
                for w in waiters {
                    let _ = w.send(result.clone());
                }
                // Give the emptied buffer back for reuse when nobody refilled it.
                let mut p = lock(&self.pending);
                if p.buf.is_empty() && p.buf.capacity() < buf.capacity() {
                    let mut buf = buf;
                    buf.clear();
                    p.buf = buf;
                }
            }
            drop(f);
            if lock(&self.pending).buf.is_empty() {
                return;
            }
        }
    }

    /// Lets go of the file's lock if a writer kept it and is not writing now;
    /// then writes what publishers queued meanwhile (they count on the flush
    /// lock's holder to write their lines).
    fn release_idle_lock(&self) {
        if let Ok(mut f) = self.file.try_lock() {
            f.unlock();
        }
        self.flush_all();
    }

    fn write(&self, f: &mut FileState, buf: &[u8]) -> Result<(), LogError> {
        let day = today();
        if day != f.day {
            f.unlock();
            let _ = f.file.sync_data();
            let path = day_path(&self.dir, day);
            let (file, len) = open_append(&path)?;
            let file = Arc::new(file);
            *lock(&self.sync_file) = file.clone();
            f.day = day;
            f.path = path;
            f.file = file;
            f.len = len;
        }
        if f.locked_since.is_none() {
            f.file
                .lock()
                .map_err(|e| LogError::io("lock", &f.path, e))?;
            f.locked_since = Some(Instant::now());
            // Other processes may have appended since this one last held the lock.
            match f.file.metadata() {
                Ok(m) => f.len = m.len(),
                Err(e) => {
                    f.unlock();
                    return Err(LogError::io("read the length of", &f.path, e));
                }
            }
        }
        let claim = OwnRange {
            day: f.day,
            start: f.len,
            end: f.len + buf.len() as u64,
        };
        let undo = self.claim(claim);
        let written = append_holding_lock(&f.file, &mut f.len, buf, &f.path);
        if written.is_err() {
            self.retract(undo);
        }
        if written.is_err() || f.locked_since.is_some_and(|t| t.elapsed() >= HOLD_MAX) {
            f.unlock();
        }
        written?;
        let FileState { file, path, .. } = f;
        if self.fsync == FsyncPolicy::Always {
            file.sync_data()
                .map_err(|e| LogError::io("sync", &*path, e))?;
        } else {
            self.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Notes `r` as written by this process (before it is), merging it with
    /// the last range when they touch; returns what undoes it.
    fn claim(&self, r: OwnRange) -> Claimed {
        let mut own = lock(&self.own);
        match own.last_mut() {
            Some(last) if last.day == r.day && last.end == r.start => {
                let before = last.end;
                last.end = r.end;
                Claimed::Extended(before)
            }
            _ => {
                own.push(r);
                Claimed::Pushed
            }
        }
    }

    /// Takes back a claim whose write failed (its bytes were cut off again).
    fn retract(&self, c: Claimed) {
        let mut own = lock(&self.own);
        match c {
            Claimed::Extended(end) => {
                if let Some(last) = own.last_mut() {
                    last.end = end;
                }
            }
            Claimed::Pushed => {
                own.pop();
            }
        }
    }

    /// `fdatasync` of the current file if lines were written since the last one.
    fn sync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let file = lock(&self.sync_file).clone();
        if let Err(e) = file.sync_data() {
            tracing::error!(dir = %self.dir.display(), error = %crate::error::chain(&e), "event log fdatasync failed");
        }
    }
}

/// How to take back one [`Shared::claim`] (claims are made and taken back
/// under the flush lock, so the last range is the claim's).
enum Claimed {
    /// The last range was extended; its end was this.
    Extended(u64),
    /// A range was added.
    Pushed,
}

fn encode_line(event: &Event, buf: &mut Vec<u8>) {
    if serde_json::to_writer(&mut *buf, event).is_err() {
        // Unreachable for a validated event (finite timestamp); keep the line whole.
        buf.extend_from_slice(event.to_value().to_string().as_bytes());
    }
    buf.push(b'\n');
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

/// The events of one day's file, in file order, read as they are iterated (a
/// day's file may be large); a missing file reads as empty.
pub fn iter_day(
    log_dir: &Path,
    day: NaiveDate,
) -> Result<Box<dyn Iterator<Item = Event> + Send>, LogError> {
    let path = day_path(log_dir, day);
    if !path.exists() {
        return Ok(Box::new(std::iter::empty()));
    }
    Ok(Box::new(JsonlReader::<Event>::open(&path)?))
}

/// The events of one day's file, in file order; a missing file reads as empty.
pub fn read_day(log_dir: &Path, day: NaiveDate) -> Result<Vec<Event>, LogError> {
    Ok(iter_day(log_dir, day)?.collect())
}

/// The events whose `timestamp` is in `[since, until)` (Unix seconds), from
/// every day file that can hold them (a day either side is read too, since a
/// line's file is the day it was written), in file order, read as they are
/// iterated: one file open at a time, memory flat however long the range. A
/// file that cannot be opened yields its error where its events would be.
pub fn iter_range(
    log_dir: &Path,
    since: f64,
    until: f64,
) -> impl Iterator<Item = Result<Event, LogError>> + Send + use<> {
    let to_day = |t: f64| {
        DateTime::<Utc>::from_timestamp(t.clamp(0.0, 253_402_300_799.0) as i64, 0)
            .map(|d| d.date_naive())
            .unwrap_or_default()
    };
    let first = to_day(since).pred_opt().unwrap_or(NaiveDate::MIN);
    let last = to_day(until).succ_opt().unwrap_or(NaiveDate::MAX);
    let dir = log_dir.to_path_buf();
    days(log_dir)
        .into_iter()
        .filter(move |d| *d >= first && *d <= last)
        .flat_map(
            move |day| -> Box<dyn Iterator<Item = Result<Event, LogError>> + Send> {
                match iter_day(&dir, day) {
                    Ok(events) => Box::new(
                        events
                            .filter(move |e| e.timestamp >= since && e.timestamp < until)
                            .map(Ok),
                    ),
                    Err(e) => Box::new(std::iter::once(Err(e))),
                }
            },
        )
}

/// The events whose `timestamp` is in `[since, until)`, collected; see [`iter_range`].
pub fn read_range(log_dir: &Path, since: f64, until: f64) -> Result<Vec<Event>, LogError> {
    iter_range(log_dir, since, until).collect()
}
