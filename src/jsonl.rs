//! JSON Lines files: one JSON object per line, UTF-8, `\n`-terminated.
//!
//! - [`JsonlWriter`]: the one writer of every handler log (`file_changes.jsonl`,
//!   `report_generations.jsonl`, `risk_alerts.jsonl`, `webhook_attempts.jsonl`, ...).
//!   Each record is one `write(2)` of one whole line on an `O_APPEND` file, so a
//!   crash can tear at most the last line. When the file would pass
//!   `max_bytes` it is rotated: `name.jsonl` becomes `name.jsonl.1`, `.1`
//!   becomes `.2`, and so on; the `keep` newest rotated files are kept.
//! - [`JsonlReader`]: reads one file as typed records, skipping (with a
//!   warning naming the file and line) every line that does not decode, such as
//!   a torn last line; [`read_rotated`] reads a rotated family oldest first.

use crate::config::{BATCH_FSYNC_INTERVAL, FsyncPolicy};
use crate::error::LogError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Opens `path` for appending (creating it and its directory), and makes sure
/// the next line starts on a line of its own: a file left with a torn last
/// line (no final `\n`) gets a `\n` first. Returns the file and its length.
pub(crate) fn open_append(path: &Path) -> Result<(File, u64), LogError> {
    if let Some(dir) = path.parent() {
        crate::private_files::create_dir_all(dir)
            .map_err(|e| LogError::io("create directory", dir, e))?;
    }
    let mut file = crate::private_files::open_options()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| LogError::io("open", path, e))?;
    file.lock().map_err(|e| LogError::io("lock", path, e))?;
    let repaired = end_with_newline(&mut file, path);
    let _ = file.unlock();
    let len = repaired?;
    Ok((file, len))
}

/// Adds a `\n` after a torn last line (the caller holds the file's lock); the new length.
fn end_with_newline(file: &mut File, path: &Path) -> Result<u64, LogError> {
    let mut len = file
        .metadata()
        .map_err(|e| LogError::io("stat", path, e))?
        .len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))
            .and_then(|_| file.read_exact(&mut last))
            .map_err(|e| LogError::io("read", path, e))?;
        if last[0] != b'\n' {
            tracing::warn!(path = %path.display(), "log file ends with a torn line; starting a new line after it");
            file.write_all(b"\n")
                .map_err(|e| LogError::io("append to", path, e))?;
            len += 1;
        }
    }
    Ok(len)
}

/// Appends `buf` to `file`, whose length this writer believes is `len`.
///
/// Several processes may append to one file (`serve` and `publish` on one log
/// directory), so the append holds the file's advisory lock (`flock`) for its
/// `write(2)`s. That makes a failed write's fragment (a full disk can take part
/// of a buffer) the last bytes of the file, and only those bytes are cut off
/// again: a failed append never removes bytes it did not write, and the next
/// line never lands behind a fragment. Every writer of pm-events' logs goes
/// through here.
pub(crate) fn append_all(
    file: &File,
    len: &mut u64,
    buf: &[u8],
    path: &Path,
) -> Result<(), LogError> {
    file.lock().map_err(|e| LogError::io("lock", path, e))?;
    let result = write_locked(file, buf);
    if let Err(e) = file.unlock() {
        tracing::warn!(path = %path.display(), error = %e, "cannot unlock a log file");
    }
    match result {
        Ok(()) => {
            *len += buf.len() as u64;
            Ok(())
        }
        Err(e) => Err(LogError::io("append to", path, e)),
    }
}

/// Like [`append_all`] for a caller that holds the file's lock already.
pub(crate) fn append_holding_lock(
    file: &File,
    len: &mut u64,
    buf: &[u8],
    path: &Path,
) -> Result<(), LogError> {
    write_locked(file, buf).map_err(|e| LogError::io("append to", path, e))?;
    *len += buf.len() as u64;
    Ok(())
}

/// Writes all of `buf` while the caller holds the file's lock; on failure
/// removes what of `buf` was written (the file's last bytes, under the lock).
fn write_locked(file: &File, buf: &[u8]) -> std::io::Result<()> {
    let mut w = file;
    let mut written = 0usize;
    while written < buf.len() {
        match w.write(&buf[written..]) {
            Ok(0) => {
                return Err(undo(file, written, std::io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(undo(file, written, e)),
        }
    }
    Ok(())
}

/// Cuts the `written` bytes of a failed append off the end of `file`; returns `e`.
fn undo(file: &File, written: usize, e: std::io::Error) -> std::io::Error {
    if written > 0 {
        let cut = file
            .metadata()
            .and_then(|m| file.set_len(m.len().saturating_sub(written as u64)));
        if let Err(c) = cut {
            tracing::error!(error = %c, "cannot remove a partly written line; readers will skip it");
        }
    }
    e
}

/// A size-rotated JSON Lines file shared by the threads and tasks that append to it.
pub struct JsonlWriter {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    fsync: FsyncPolicy,
    /// The open file and its length; a std mutex because each append is one
    /// short `write(2)` and never awaits.
    state: Mutex<WriterState>,
}

struct WriterState {
    file: File,
    len: u64,
    last_sync: Instant,
    unsynced: bool,
}

impl JsonlWriter {
    /// Opens (or creates) `path` for appending.
    pub fn open(
        path: impl Into<PathBuf>,
        max_bytes: u64,
        keep: usize,
        fsync: FsyncPolicy,
    ) -> Result<Self, LogError> {
        let path = path.into();
        let (file, len) = open_append(&path)?;
        Ok(JsonlWriter {
            path,
            max_bytes: max_bytes.max(1),
            keep: keep.max(1),
            fsync,
            state: Mutex::new(WriterState {
                file,
                len,
                last_sync: Instant::now(),
                unsynced: false,
            }),
        })
    }

    /// The path of the current (newest) file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record as one line.
    pub fn append<T: Serialize + ?Sized>(&self, record: &T) -> Result<(), LogError> {
        let mut line = serde_json::to_vec(record).map_err(|e| {
            LogError::io("encode a record for", &self.path, std::io::Error::other(e))
        })?;
        line.push(b'\n');
        let mut st = self.state.lock().map_err(|_| LogError::Closed)?;
        if st.len > 0 && st.len + line.len() as u64 > self.max_bytes {
            self.rotate(&mut st)?;
        }
        let WriterState { file, len, .. } = &mut *st;
        append_all(file, len, &line, &self.path)?;
        st.unsynced = true;
        let due = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Batch => st.last_sync.elapsed() >= BATCH_FSYNC_INTERVAL,
            FsyncPolicy::Never => false,
        };
        if due {
            st.file
                .sync_data()
                .map_err(|e| LogError::io("sync", &self.path, e))?;
            st.last_sync = Instant::now();
            st.unsynced = false;
        }
        Ok(())
    }

    /// Forces written lines to disk.
    pub fn sync(&self) -> Result<(), LogError> {
        let mut st = self.state.lock().map_err(|_| LogError::Closed)?;
        if st.unsynced {
            st.file
                .sync_data()
                .map_err(|e| LogError::io("sync", &self.path, e))?;
            st.unsynced = false;
            st.last_sync = Instant::now();
        }
        Ok(())
    }

    fn rotate(&self, st: &mut WriterState) -> Result<(), LogError> {
        let _ = st.file.sync_data();
        let _ = std::fs::remove_file(rotated_path(&self.path, self.keep));
        for i in (1..self.keep).rev() {
            let from = rotated_path(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated_path(&self.path, i + 1))
                    .map_err(|e| LogError::io("rotate", &from, e))?;
            }
        }
        std::fs::rename(&self.path, rotated_path(&self.path, 1))
            .map_err(|e| LogError::io("rotate", &self.path, e))?;
        let (file, len) = open_append(&self.path)?;
        st.file = file;
        st.len = len;
        st.unsynced = false;
        Ok(())
    }
}

impl Drop for JsonlWriter {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// `path` with `.n` appended: the n-th newest rotated file.
pub fn rotated_path(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files of a rotated family that exist, oldest first, ending with `path` itself.
pub fn rotated_family(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(usize, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        let prefix = format!("{name}.");
        if let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) {
            for entry in entries.flatten() {
                if let Some(n) = entry
                    .file_name()
                    .to_str()
                    .and_then(|f| f.strip_prefix(&prefix))
                    .and_then(|n| n.parse::<usize>().ok())
                {
                    rotated.push((n, rotated_path(path, n)));
                }
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

/// Reads every record of a rotated family (see [`rotated_family`]), oldest first.
pub fn read_rotated<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, LogError> {
    let mut out = Vec::new();
    for p in rotated_family(path) {
        out.extend(JsonlReader::<T>::open(&p)?);
    }
    Ok(out)
}

/// The records of a rotated family, oldest first, read as they are iterated (one
/// file open at a time). A file that cannot be opened (rotated away meanwhile) is
/// skipped with a warning, like a line that does not decode.
pub fn iter_rotated<T: DeserializeOwned>(path: &Path) -> impl Iterator<Item = T> + use<T> {
    rotated_family(path)
        .into_iter()
        .flat_map(|p| match JsonlReader::<T>::open(&p) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "log file skipped");
                None
            }
        })
        .flatten()
}

/// Reads a JSON Lines file as records of type `T`, skipping lines that do not
/// decode (each with a warning naming the file and line number).
pub struct JsonlReader<T> {
    path: PathBuf,
    reader: BufReader<File>,
    line_no: usize,
    skipped: usize,
    buf: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> JsonlReader<T> {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let file = File::open(path).map_err(|e| LogError::io("open", path, e))?;
        Ok(JsonlReader {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(64 * 1024, file),
            line_no: 0,
            skipped: 0,
            buf: String::new(),
            _t: PhantomData,
        })
    }

    /// Lines skipped so far because they did not decode.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// The 1-based number of the line read last.
    pub fn line_no(&self) -> usize {
        self.line_no
    }
}

impl<T: DeserializeOwned> Iterator for JsonlReader<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        loop {
            self.buf.clear();
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), line = self.line_no + 1, error = %e, "unreadable log line skipped; stopping at it");
                    self.skipped += 1;
                    return None;
                }
            }
            self.line_no += 1;
            let complete = self.buf.ends_with('\n');
            let text = self.buf.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<T>(text) {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.skipped += 1;
                    if complete {
                        tracing::warn!(path = %self.path.display(), line = self.line_no, error = %e, "invalid log line skipped");
                    } else {
                        tracing::warn!(path = %self.path.display(), line = self.line_no, "torn last line skipped (the writer stopped mid-line)");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn rotation_keeps_the_newest_files_and_reads_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x/h.jsonl");
        let w = JsonlWriter::open(&path, 1024, 2, FsyncPolicy::Never).unwrap();
        for i in 0..100 {
            w.append(&json!({"i": i, "pad": "x".repeat(40)})).unwrap();
        }
        let fam = rotated_family(&path);
        assert_eq!(fam.len(), 3, "{fam:?}");
        assert!(!rotated_path(&path, 3).exists());
        let all: Vec<Value> = read_rotated(&path).unwrap();
        let is: Vec<i64> = all.iter().map(|v| v["i"].as_i64().unwrap()).collect();
        assert!(!is.is_empty() && is.len() < 100);
        assert!(is.windows(2).all(|w| w[1] == w[0] + 1), "{is:?}");
        assert_eq!(*is.last().unwrap(), 99);
    }

    #[test]
    fn torn_tail_is_skipped_and_repaired_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").unwrap();
        let mut r = JsonlReader::<Value>::open(&path).unwrap();
        assert_eq!(r.by_ref().count(), 2);
        assert_eq!(r.skipped(), 1);
        let w = JsonlWriter::open(&path, 1 << 20, 2, FsyncPolicy::Never).unwrap();
        w.append(&json!({"a": 3})).unwrap();
        let v: Vec<Value> = read_rotated(&path).unwrap();
        assert_eq!(v, vec![json!({"a":1}), json!({"a":2}), json!({"a":3})]);
    }
}
