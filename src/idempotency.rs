//! Idempotent publish: an event published again with an `event_id` accepted in
//! the last [`WINDOW`] is accepted once; the repeat returns the same id and
//! does nothing (docs/architecture.md, invariant 6).
//!
//! The ids remembered are those of the events this bus accepted, plus — loaded
//! in the background when the bus starts, so start-up does not wait — those of
//! the last [`LOAD_BYTES`] of today's and yesterday's event log files, which
//! other processes and earlier runs wrote. A publish that brings its own id
//! waits for that load; one whose id the bus makes does not look at all.
//! At most [`MAX_IDS`] ids are remembered, the oldest forgotten first.
//!
//! Concurrent publishes of one id share a cell: the first writes the event,
//! the others wait for it and get its id (if the first is refused, the next
//! one tries).

use crate::event::now_unix;
use crate::journal::{day_path, today};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{OnceCell, watch};

/// How long an accepted id is remembered.
pub const WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Most ids remembered.
pub const MAX_IDS: usize = 200_000;
/// How much of the end of each of the last two days' log files is read at start.
pub const LOAD_BYTES: u64 = 64 * 1024 * 1024;

/// What became of an idempotent publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The event's id.
    pub event_id: String,
    /// `true` when an event with this id was accepted already (nothing was done).
    pub duplicate: bool,
}

/// The ids accepted recently; see the module docs.
pub(crate) struct RecentIds {
    index: Mutex<Index>,
    /// `true` once the log's ids are loaded.
    loaded: watch::Receiver<bool>,
}

#[derive(Default)]
struct Index {
    cells: HashMap<String, Arc<OnceCell<()>>>,
    order: VecDeque<(f64, String)>,
}

impl Index {
    fn purge(&mut self) {
        let horizon = now_unix() - WINDOW.as_secs_f64();
        while let Some((at, id)) = self.order.front() {
            if *at < horizon || self.order.len() > MAX_IDS {
                self.cells.remove(id);
                self.order.pop_front();
            } else {
                break;
            }
        }
    }

    fn cell(&mut self, id: &str) -> Arc<OnceCell<()>> {
        if let Some(c) = self.cells.get(id) {
            return c.clone();
        }
        let c = Arc::new(OnceCell::new());
        self.cells.insert(id.to_string(), c.clone());
        self.order.push_back((now_unix(), id.to_string()));
        self.purge();
        c
    }
}

impl RecentIds {
    /// Remembers nothing yet; with `log_dir`, loads its recent ids in the background.
    pub(crate) fn start(log_dir: Option<&Path>) -> Arc<RecentIds> {
        let (tx, rx) = watch::channel(log_dir.is_none());
        let ids = Arc::new(RecentIds {
            index: Mutex::new(Index::default()),
            loaded: rx,
        });
        if let Some(dir) = log_dir {
            let (dir, ids2) = (dir.to_path_buf(), ids.clone());
            let spawned = std::thread::Builder::new()
                .name("pm-events-recent-ids".into())
                .spawn(move || {
                    let found = load(&dir);
                    let mut index = ids2.index.lock().unwrap_or_else(PoisonError::into_inner);
                    for id in found {
                        let cell = index.cell(&id);
                        let _ = cell.set(());
                    }
                    drop(index);
                    let _ = tx.send(true);
                });
            if spawned.is_err() {
                tracing::warn!(
                    "cannot start loading the recent event ids; repeats are recognised only within this run"
                );
            }
        }
        ids
    }

    /// Runs `accept` unless an event with `id` was accepted already (or is being
    /// accepted by a concurrent publish, which it then waits for).
    pub(crate) async fn once<E>(
        &self,
        id: &str,
        accept: impl AsyncFnOnce() -> Result<(), E>,
    ) -> Result<Accepted, E> {
        let mut loaded = self.loaded.clone();
        let _ = loaded.wait_for(|l| *l).await;
        let cell = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cell(id);
        let mut first = false;
        cell.get_or_try_init(|| async {
            first = true;
            accept().await
        })
        .await?;
        Ok(Accepted {
            event_id: id.to_string(),
            duplicate: !first,
        })
    }
}

/// The ids of the last [`LOAD_BYTES`] of yesterday's and today's log files, oldest first.
fn load(log_dir: &Path) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        event_id: String,
    }
    let day = today();
    let mut out = Vec::new();
    for d in [day.pred_opt(), Some(day)].into_iter().flatten() {
        let Ok(mut f) = std::fs::File::open(day_path(log_dir, d)) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(LOAD_BYTES);
        if f.seek(SeekFrom::Start(start)).is_err() {
            continue;
        }
        let mut lines = BufReader::with_capacity(1 << 16, f.take(len - start)).split(b'\n');
        if start > 0 {
            lines.next(); // a partial first line
        }
        for line in lines.map_while(Result::ok) {
            if let Ok(e) = serde_json::from_slice::<IdOnly>(&line) {
                out.push(e.event_id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_id_is_accepted_once_even_by_concurrent_publishes() {
        let ids = RecentIds::start(None);
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let publish = || async {
            ids.once("k1", async || {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::task::yield_now().await;
                Ok::<(), ()>(())
            })
            .await
            .unwrap()
        };
        let (a, b) = tokio::join!(publish(), publish());
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_ne!(a.duplicate, b.duplicate);
        // A refused first try leaves the id free for the next.
        let refused = ids.once("k2", async || Err::<(), _>("full")).await;
        assert!(refused.is_err());
        let again = ids.once("k2", async || Ok::<(), &str>(())).await.unwrap();
        assert!(!again.duplicate);
    }
}
