//! Recovery: the event log is the queue of record. What an accepted event
//! needs to be handled again after a crash is in the log already; this module
//! records which events are *done* and, at start, finds the ones that are not.
//!
//! # Files (under `<log dir>/recovery/`, beside the event log's `events/`)
//!
//! - `handled/<run>.ids` — one per run of a bus (a process's `start` to `stop`):
//!   the `event_id` of every event whose handlers all finished, one per line,
//!   appended in batches by a background thread (at most every
//!   [`FLUSH_INTERVAL`], and at `stop`). While the run is alive it holds the
//!   file's advisory lock (`flock`); an `.ids` file whose lock can be taken
//!   belongs to a run that died. A run that stops cleanly removes its file when
//!   it can move the checkpoint, or else renames it `<run>.done` (every event of
//!   it is done); a takeover renames a dead run's file `<run>.done` once its
//!   events are handled.
//! - `checkpoint.json` — `{"day":"YYYYMMDD","offset":N}`: every event before
//!   byte `N` of that day's log (and in every earlier day) is done. Written when
//!   a bus stops cleanly and every other run's file is a `.done` one (no other
//!   run is alive, and none died without being recovered), and when a recovery
//!   is done.
//! - `recovery.lock` — taken by a starting bus while it registers its run and
//!   plans its recovery, so no other process starts in between.
//!
//! # At start
//!
//! A bus with a log, on the in-process transport, takes `recovery.lock`,
//! registers its own run, and looks at the other runs. If one of them is still
//! alive, it recovers nothing now (that process may be handling the events; the
//! next start that finds itself alone recovers them). Otherwise it reads the
//! done ids of the ended runs, notes the length of every log file from the
//! checkpoint on, lets go of the lock, and dispatches again — in log order,
//! with their original `event_id` and `timestamp`, marked
//! [`redelivered`](crate::Event::redelivered) — every logged event after the
//! checkpoint and before those lengths that no run recorded as done. Events
//! published meanwhile are appended after those lengths, so they are never
//! taken twice. When every recovered event is done, the ended runs' files are
//! removed and the checkpoint moves to where the recovery stopped.
//!
//! # Bounds
//!
//! - **Nothing accepted is lost**: an event's line is in the log before
//!   `publish` returns; it stops being a candidate for recovery only once its id
//!   is in a done file, which is written after its handlers finished.
//! - **Handled twice**: only an event whose handlers finished in the last
//!   [`FLUSH_INTERVAL`] before a crash (its id not yet written) — that window,
//!   times the rate at which events finish.
//! - **Start-up cost**: reading the done ids of the ended runs and the log from
//!   the checkpoint, in a background task (new events are accepted meanwhile).
//!   The checkpoint moves at every clean stop of a lone bus and after every
//!   recovery, so after a crash the scan covers what was logged since then: a
//!   process that ran for a long time before it crashed costs a scan of what it
//!   logged in that time.
//! - **Several processes**: a bus recovers at start only when no other run is
//!   alive, and only what was logged before it started. A process that dies
//!   while others run is taken over by a running bus once that bus is the only
//!   live process ([`take_over`]): the lines it did not write itself (the
//!   journal's [`own_ranges`](crate::journal::EventLog::own_ranges)) and that no
//!   run recorded as done are the dead runs'. It cannot move the checkpoint
//!   (its own events are among those lines), so it marks the dead runs' files
//!   finished instead; its next clean stop moves the checkpoint.

use crate::error::LogError;
use crate::event::Event;
use crate::journal::{OwnRange, day_path, days};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Longest time a finished event's id waits in memory before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Where every event before is done: a day's log file and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The day of the log file.
    #[serde(with = "day_format")]
    pub day: NaiveDate,
    /// Bytes of that file known to be done.
    pub offset: u64,
}

mod day_format {
    use chrono::NaiveDate;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &NaiveDate, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&d.format("%Y%m%d").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDate, D::Error> {
        let text = String::deserialize(d)?;
        NaiveDate::parse_from_str(&text, "%Y%m%d").map_err(serde::de::Error::custom)
    }
}

fn recovery_dir(log_dir: &Path) -> PathBuf {
    log_dir.join("recovery")
}

fn handled_dir(log_dir: &Path) -> PathBuf {
    recovery_dir(log_dir).join("handled")
}

fn checkpoint_path(log_dir: &Path) -> PathBuf {
    recovery_dir(log_dir).join("checkpoint.json")
}

/// The checkpoint, if one was written (an unreadable one counts as none, with a warning).
pub fn read_checkpoint(log_dir: &Path) -> Option<Position> {
    let path = checkpoint_path(log_dir);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable checkpoint; recovering from the start of the log");
            None
        }
    }
}

fn write_checkpoint(log_dir: &Path, at: Position) -> Result<(), LogError> {
    let path = checkpoint_path(log_dir);
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let bytes = serde_json::to_vec(&at).unwrap_or_default();
    crate::private_files::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| LogError::io("write", &path, e))
}

/// The end of the log now: the last day's file and its length.
fn log_end(log_dir: &Path) -> Option<Position> {
    let day = *days(log_dir).last()?;
    let len = std::fs::metadata(day_path(log_dir, day)).ok()?.len();
    Some(Position { day, offset: len })
}

/// This run's done file: ids are handed over in memory and written in batches.
pub struct Ledger {
    log_dir: PathBuf,
    path: PathBuf,
    /// Ids of finished events not yet written; the flusher takes them.
    pending: Arc<(Mutex<LedgerState>, Condvar)>,
    /// The flusher thread; joined by [`Ledger::close`].
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The open file, written by the flusher and by [`Ledger::flush_now`].
    file: Arc<Mutex<File>>,
}

#[derive(Default)]
struct LedgerState {
    ids: Vec<u8>,
    closed: bool,
}

impl Ledger {
    /// Records that every handler of `event_id` finished.
    pub fn done(&self, event_id: &str) {
        let (state, wake) = &*self.pending;
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.ids.is_empty() {
            wake.notify_one();
        }
        s.ids.extend_from_slice(event_id.as_bytes());
        s.ids.push(b'\n');
    }

    /// Writes the ids handed over so far now (not waiting for the flusher).
    pub fn flush_now(&self) {
        let buf = {
            let (state, _) = &*self.pending;
            std::mem::take(&mut state.lock().unwrap_or_else(PoisonError::into_inner).ids)
        };
        write_ids(&self.file, &buf, &self.path);
    }

    /// Writes what is pending and stops the flusher; the file stays locked
    /// until the ledger is dropped.
    pub fn close(&self) {
        {
            let (state, wake) = &*self.pending;
            state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
            wake.notify_one();
        }
        let handle = self
            .flusher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the done-ledger writer panicked");
        }
    }

    /// At a clean stop (the caller knows every event of this run is done and has
    /// closed the ledger): moves the checkpoint to the end of the log and removes
    /// the done files it covers — unless another run's file is not known to be
    /// finished (a live run, or one that died and was not recovered yet: its
    /// events may be unhandled, and the checkpoint must stay before them). Then
    /// this run's file is kept, renamed `<run>.done`: every event of it is done.
    pub fn checkpoint_at_end(&self) {
        let lock = match lock_recovery(&self.log_dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot move the checkpoint");
                self.mark_finished();
                return;
            }
        };
        let mut finished = Vec::new();
        for p in other_runs(&self.log_dir, &self.path) {
            if is_finished(&p) {
                finished.push(p);
            } else {
                self.mark_finished();
                return;
            }
        }
        let moved = log_end(&self.log_dir).map(|end| write_checkpoint(&self.log_dir, end));
        match moved {
            Some(Ok(())) => {
                for p in finished {
                    let _ = std::fs::remove_file(&p);
                }
                let _ = std::fs::remove_file(&self.path);
            }
            Some(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot write the checkpoint");
                self.mark_finished();
            }
            None => self.mark_finished(),
        }
        drop(lock);
    }

    /// Renames this run's file `<run>.done`: a run that stopped with every event done.
    fn mark_finished(&self) {
        if let Err(e) = std::fs::rename(&self.path, self.path.with_extension(FINISHED)) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot mark the done ledger finished");
        }
    }
}

/// The extension of a run's done file while it runs, or if it died.
const RUNNING: &str = "ids";
/// The extension of the done file of a run that stopped with every event done.
const FINISHED: &str = "done";

fn is_finished(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == FINISHED)
}

#[cfg(test)]
impl Ledger {
    /// A crash, for tests: the flusher stops without writing what is pending,
    /// and the file's lock goes with the file.
    fn crash(self) {
        {
            let (state, wake) = &*self.pending;
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            s.ids.clear();
            s.closed = true;
            wake.notify_one();
        }
        self.close();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.close();
    }
}

fn try_lock(path: &Path) -> Option<File> {
    let f = OpenOptions::new().read(true).write(true).open(path).ok()?;
    match f.try_lock() {
        Ok(()) => Some(f),
        Err(_) => None,
    }
}

fn other_runs(log_dir: &Path, own: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(handled_dir(log_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == RUNNING || x == FINISHED) && p != own)
        .collect();
    out.sort();
    out
}

/// Holds `recovery.lock` while a run registers and plans.
fn lock_recovery(log_dir: &Path) -> Result<File, LogError> {
    let dir = recovery_dir(log_dir);
    crate::private_files::create_dir_all(&dir)
        .map_err(|e| LogError::io("create directory", &dir, e))?;
    let path = dir.join("recovery.lock");
    let f = crate::private_files::open_options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LogError::io("open", &path, e))?;
    f.lock().map_err(|e| LogError::io("lock", &path, e))?;
    Ok(f)
}

/// What a starting bus recovers: the events to dispatch again, and then
/// where the checkpoint may move.
pub struct Plan {
    log_dir: PathBuf,
    /// Ids recorded as done by the ended runs.
    done: HashSet<String>,
    /// Read from here ...
    from: Option<Position>,
    /// ... to the length each day's file had when the plan was made.
    until: Vec<Position>,
    /// The ended runs' files (locked, so no other start takes them too).
    ended: Vec<(PathBuf, File)>,
    /// Lines of the running process itself, not to be taken (a takeover).
    exclude: Vec<OwnRange>,
    /// A takeover by a running process (see [`take_over`]) rather than a start's recovery.
    takeover: bool,
}

/// Opens this run's done ledger and, when no other run is alive, the plan of
/// what to recover (see the module docs).
pub fn start(log_dir: &Path) -> Result<(Ledger, Option<Plan>), LogError> {
    let _lock = lock_recovery(log_dir)?;
    let dir = handled_dir(log_dir);
    crate::private_files::create_dir_all(&dir)
        .map_err(|e| LogError::io("create directory", &dir, e))?;
    let path = dir.join(format!("{}.{RUNNING}", uuid::Uuid::now_v7()));
    let file = crate::private_files::open_options()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| LogError::io("create", &path, e))?;
    file.lock().map_err(|e| LogError::io("lock", &path, e))?;
    let mut ended = Vec::new();
    let mut alive = 0usize;
    for p in other_runs(log_dir, &path) {
        match try_lock(&p) {
            Some(f) => ended.push((p, f)),
            None => alive += 1,
        }
    }
    let plan = if alive > 0 {
        tracing::warn!(
            alive,
            "another process is running on this log directory: events left unhandled by a crash are recovered by the next start that finds itself alone"
        );
        None
    } else {
        let from = read_checkpoint(log_dir);
        let mut done = HashSet::new();
        for (p, _) in &ended {
            read_ids(p, &mut done);
        }
        Some(Plan {
            log_dir: log_dir.to_path_buf(),
            done,
            from,
            until: lengths_from(log_dir, from),
            ended,
            exclude: Vec::new(),
            takeover: false,
        })
    };
    let pending = Arc::new((Mutex::new(LedgerState::default()), Condvar::new()));
    let file = Arc::new(Mutex::new(file));
    let flusher = {
        let (pending, path, file) = (pending.clone(), path.clone(), file.clone());
        std::thread::Builder::new()
            .name("pm-events-ledger".into())
            .spawn(move || flush_loop(&file, &pending, &path))
            .map_err(|e| LogError::io("start the writer of", &dir, e))?
    };
    Ok((
        Ledger {
            log_dir: log_dir.to_path_buf(),
            path,
            pending,
            flusher: Mutex::new(Some(flusher)),
            file,
        },
        plan,
    ))
}

/// The length of every day's log file from the checkpoint's day on.
fn lengths_from(log_dir: &Path, from: Option<Position>) -> Vec<Position> {
    let first_day = from.map(|p| p.day);
    days(log_dir)
        .into_iter()
        .filter(|d| first_day.is_none_or(|f| *d >= f))
        .filter_map(|day| {
            std::fs::metadata(day_path(log_dir, day))
                .ok()
                .map(|m| Position {
                    day,
                    offset: m.len(),
                })
        })
        .collect()
}

/// Whether another run's file is an `.ids` whose lock can be taken: a run
/// that died (cheap enough to ask every few seconds).
pub fn has_dead_run(log_dir: &Path, own: &Ledger) -> bool {
    other_runs(log_dir, &own.path)
        .iter()
        .any(|p| !is_finished(p) && try_lock(p).is_some())
}

/// The takeover of a dead run's events by a running bus (invariant 5): when
/// every other run is either dead or finished, the events logged after the
/// checkpoint that no run recorded as done and that this process did not
/// write (`own_ranges`, read after the log's lengths) are the dead runs' — to
/// dispatch again. `None` when there is nothing to take over or another run
/// is alive (that one may be handling them; the takeover waits until this
/// process is the only one left).
pub fn take_over(
    log_dir: &Path,
    own: &Ledger,
    own_ranges: impl FnOnce() -> Vec<OwnRange>,
) -> Result<Option<Plan>, LogError> {
    let _lock = lock_recovery(log_dir)?;
    let mut ended = Vec::new();
    let mut finished = Vec::new();
    for p in other_runs(log_dir, &own.path) {
        if is_finished(&p) {
            finished.push(p);
            continue;
        }
        match try_lock(&p) {
            Some(f) => ended.push((p, f)),
            None => return Ok(None),
        }
    }
    if ended.is_empty() {
        return Ok(None);
    }
    let from = read_checkpoint(log_dir);
    let until = lengths_from(log_dir, from);
    let exclude = own_ranges();
    let mut done = HashSet::new();
    for p in ended.iter().map(|(p, _)| p).chain(&finished) {
        read_ids(p, &mut done);
    }
    Ok(Some(Plan {
        log_dir: log_dir.to_path_buf(),
        done,
        from,
        until,
        ended,
        exclude,
        takeover: true,
    }))
}

fn flush_loop(file: &Mutex<File>, pending: &(Mutex<LedgerState>, Condvar), path: &Path) {
    let (state, wake) = pending;
    loop {
        let (buf, closed) = {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            if s.ids.is_empty() && !s.closed {
                s = wake
                    .wait_timeout(s, FLUSH_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            (std::mem::take(&mut s.ids), s.closed)
        };
        write_ids(file, &buf, path);
        if closed {
            let _ = file
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sync_data();
            return;
        }
        // Gather ids for a while before the next write.
        std::thread::sleep(FLUSH_INTERVAL);
    }
}

/// Appends done ids (whole lines) to a run's file.
fn write_ids(file: &Mutex<File>, buf: &[u8], path: &Path) {
    if buf.is_empty() {
        return;
    }
    let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = f.write_all(buf) {
        // The ids are lost: those events may be handled again after a crash.
        tracing::error!(path = %path.display(), error = %e, "cannot write the done ledger");
    }
}

fn read_ids(path: &Path, into: &mut HashSet<String>) {
    let Ok(f) = File::open(path) else { return };
    for line in BufReader::new(f).split(b'\n').map_while(Result::ok) {
        if let Ok(id) = String::from_utf8(line)
            && !id.is_empty()
        {
            into.insert(id);
        }
    }
}

impl Plan {
    /// Calls `each` with every logged event of the plan's range that is not
    /// done, in log order, marked redelivered; stops early when `each` returns
    /// `false`. Returns how many it passed on, or `None` if it stopped early.
    pub fn for_each_pending(&self, mut each: impl FnMut(Event) -> bool) -> Option<u64> {
        let mut n = 0u64;
        for end in &self.until {
            let path = day_path(&self.log_dir, end.day);
            let Ok(mut f) = File::open(&path) else {
                continue;
            };
            let start = match self.from {
                Some(p) if p.day == end.day => p.offset,
                _ => 0,
            };
            if start >= end.offset || f.seek(SeekFrom::Start(start)).is_err() {
                continue;
            }
            let reader = BufReader::with_capacity(1 << 16, f.take(end.offset - start));
            let own: Vec<&OwnRange> = self.exclude.iter().filter(|r| r.day == end.day).collect();
            let mut at = start;
            for (i, line) in reader.split(b'\n').enumerate() {
                let Ok(line) = line else { break };
                let line_start = at;
                at += line.len() as u64 + 1;
                if line.is_empty()
                    || own
                        .iter()
                        .any(|r| r.start <= line_start && line_start < r.end)
                {
                    continue;
                }
                let mut event: Event = match serde_json::from_slice(&line) {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(path = %path.display(), line = i + 1, error = %e, "undecodable event log line skipped by recovery");
                        continue;
                    }
                };
                if self.done.contains(&event.event_id) {
                    continue;
                }
                event.redelivered = true;
                n += 1;
                if !each(event) {
                    return None;
                }
            }
        }
        Some(n)
    }

    /// Bytes of the event log the plan reads: what was logged after the
    /// checkpoint (invariant 4: start-up follows the unhandled events, not the
    /// size of the log).
    pub fn bytes_to_read(&self) -> u64 {
        self.until
            .iter()
            .map(|end| match self.from {
                Some(p) if p.day == end.day => end.offset.saturating_sub(p.offset),
                _ => end.offset,
            })
            .sum()
    }

    /// Whether this plan takes over a dead run's events while this process runs.
    pub fn is_takeover(&self) -> bool {
        self.takeover
    }

    /// Every recovered event is done: the checkpoint moves to where the plan
    /// ended and the ended runs' files go (their ids are covered by it). After
    /// a takeover the checkpoint cannot move (this process's own events are
    /// among those lines): the dead runs' files become `.done` ones instead —
    /// their events are done, the taken-over ones recorded in this run's file.
    pub fn finish(self) {
        if self.takeover {
            let _lock = lock_recovery(&self.log_dir);
            for (p, _f) in self.ended {
                if let Err(e) = std::fs::rename(&p, p.with_extension(FINISHED)) {
                    tracing::warn!(path = %p.display(), error = %e, "cannot mark a taken-over run finished");
                }
            }
            return;
        }
        let Some(end) = self.until.last().copied() else {
            return;
        };
        let _lock = match lock_recovery(&self.log_dir) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot finish the recovery");
                return;
            }
        };
        if let Err(e) = write_checkpoint(&self.log_dir, end) {
            tracing::warn!(error = %crate::error::chain(&e), "cannot write the checkpoint");
            return;
        }
        for (p, _f) in self.ended {
            let _ = std::fs::remove_file(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::today;
    use std::collections::BTreeSet;

    fn append_events(log_dir: &Path, events: &[Event]) {
        let path = day_path(log_dir, today());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for e in events {
            writeln!(f, "{}", e.to_json()).unwrap();
        }
    }

    /// A model of the ledger and checkpoint: random publishes, finishes, clean
    /// stops and crashes (the pending ids lost), against real files. At every
    /// start the recovered events must include every accepted event not yet
    /// finished (nothing lost), be accepted events (nothing invented), each once,
    /// and never one finished before the last clean stop or recovery.
    #[test]
    fn random_finishes_crashes_and_restarts_lose_nothing() {
        for seed in 0..40u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let dir = tempfile::tempdir().unwrap();
            let log_dir = dir.path();
            let mut accepted: BTreeSet<String> = BTreeSet::new();
            let mut finished: BTreeSet<String> = BTreeSet::new();
            // Finished before the last clean stop or finished recovery: settled for good.
            let mut settled: BTreeSet<String> = BTreeSet::new();
            let (mut ledger, mut plan) = start(log_dir).unwrap();
            let mut inflight: Vec<String> = Vec::new();
            let mut next = 0u64;
            for _step in 0..60 {
                match rng.u8(0..10) {
                    0..=3 => {
                        let events: Vec<Event> = (0..rng.usize(1..20))
                            .map(|_| {
                                next += 1;
                                Event::new("model", serde_json::json!({ "n": next }))
                            })
                            .collect();
                        append_events(log_dir, &events);
                        for e in events {
                            accepted.insert(e.event_id.clone());
                            inflight.push(e.event_id);
                        }
                    }
                    4..=6 => {
                        for _ in 0..rng.usize(0..=inflight.len()) {
                            let id = inflight.swap_remove(rng.usize(0..inflight.len()));
                            ledger.done(&id);
                            finished.insert(id);
                        }
                    }
                    7 => {
                        // A clean stop: everything finishes, the checkpoint moves.
                        for id in inflight.drain(..) {
                            ledger.done(&id);
                            finished.insert(id);
                        }
                        ledger.close();
                        if let Some(p) = plan.take() {
                            p.finish();
                        }
                        ledger.checkpoint_at_end();
                        drop(ledger);
                        settled.extend(finished.iter().cloned());
                        (ledger, plan) = start(log_dir).unwrap();
                        let mut got = Vec::new();
                        plan.as_ref().unwrap().for_each_pending(|e| {
                            got.push(e.event_id);
                            true
                        });
                        assert!(
                            got.is_empty(),
                            "seed {seed}: after a clean stop nothing is pending: {got:?}"
                        );
                    }
                    _ => {
                        // A crash: what was finished but not yet written is lost.
                        ledger.crash();
                        drop(plan.take());
                        (ledger, plan) = start(log_dir).unwrap();
                        let mut got = Vec::new();
                        plan.as_ref().unwrap().for_each_pending(|e| {
                            assert!(e.redelivered);
                            got.push(e.event_id);
                            true
                        });
                        let got_set: BTreeSet<String> = got.iter().cloned().collect();
                        assert_eq!(got.len(), got_set.len(), "seed {seed}: each event once");
                        for id in &got_set {
                            assert!(
                                accepted.contains(id),
                                "seed {seed}: {id} was never accepted"
                            );
                            assert!(
                                !settled.contains(id),
                                "seed {seed}: {id} was settled before"
                            );
                        }
                        let unfinished: BTreeSet<String> =
                            accepted.difference(&finished).cloned().collect();
                        assert!(
                            unfinished.is_subset(&got_set),
                            "seed {seed}: lost {:?}",
                            unfinished.difference(&got_set).collect::<Vec<_>>()
                        );
                        // The recovered events are in flight again in this run.
                        inflight = got;
                        for id in &inflight {
                            finished.remove(id);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn positions_round_trip_as_day_and_offset() {
        let p = Position {
            day: NaiveDate::from_ymd_opt(2025, 1, 15).unwrap(),
            offset: 42,
        };
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(text, r#"{"day":"20250115","offset":42}"#);
        assert_eq!(serde_json::from_str::<Position>(&text).unwrap(), p);
    }
}
