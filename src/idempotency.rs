//! Every event id is unique in the log: an event published again with an
//! `event_id` accepted in the last [`WINDOW`] is accepted once; the repeat
//! returns the same id and does nothing (docs/architecture.md, invariant 6).
//!
//! Every publish path claims its event's id here before the event is written
//! — ids the bus made as much as ids that came from outside — so an id the
//! bus assigned is a duplicate when a caller sends it back. The ids known are
//! those of the events this bus accepted, plus — loaded in the background when
//! the bus starts, so start-up does not wait — those of the last
//! [`LOAD_BYTES`] of today's and yesterday's event log files, which other
//! processes and earlier runs wrote. A publish of an event built outside the
//! bus waits for that load before it claims; a publish whose id the bus has
//! just made does not (no log can hold it). At most [`MAX_IDS`] ids are
//! remembered, the oldest forgotten first.
//!
//! A claim is a `Ticket`: the id is *pending* until the ticket is
//! `done` (the event's line is written), and forgotten if the
//! ticket is dropped first (the event was refused, so the next publish of
//! that id may try). A concurrent publish of a pending id waits for it to
//! settle, then claims again: one id is written once however many copies
//! arrive at once.

use crate::event::now_unix;
use crate::journal::{day_path, today};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;

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

/// The ids accepted recently; see the module docs. Owned by a running bus
/// (one per run); tickets hold it until they settle.
pub(crate) struct RecentIds {
    index: Mutex<Index>,
    /// `true` once the log's ids are loaded.
    loaded: watch::Receiver<bool>,
}

/// The state of one remembered id.
enum Slot {
    /// Its event is written.
    Done,
    /// A publish holds its ticket. The sender exists once someone waits: the
    /// ticket settling replaces the slot, which drops it and wakes them.
    Pending(Option<watch::Sender<()>>),
}

#[derive(Default)]
struct Index {
    slots: HashMap<Arc<str>, Slot>,
    order: VecDeque<(f64, Arc<str>)>,
}

impl Index {
    fn purge(&mut self) {
        let horizon = now_unix() - WINDOW.as_secs_f64();
        while let Some((at, id)) = self.order.front() {
            if *at < horizon || self.order.len() > MAX_IDS {
                if matches!(self.slots.get(id), Some(Slot::Done)) {
                    self.slots.remove(id);
                }
                self.order.pop_front();
            } else {
                break;
            }
        }
    }

    fn insert(&mut self, id: &str, slot: Slot) -> Arc<str> {
        let key: Arc<str> = Arc::from(id);
        self.slots.insert(key.clone(), slot);
        self.order.push_back((now_unix(), key.clone()));
        self.purge();
        key
    }
}

/// The outcome of [`RecentIds::claim`].
pub(crate) enum Claim {
    /// Nobody has this id: the holder writes the event, then settles the ticket.
    Fresh(Ticket),
    /// An event with this id is written already.
    Duplicate,
    /// Another publish holds the id: wait for this to change (or close), then claim again.
    Pending(watch::Receiver<()>),
}

/// The claim of one id by the publish that writes its event. Owned by that
/// publish (carried with the event to the log write); [`done`](Self::done)
/// once the line is written, or dropped to give the id up.
pub(crate) struct Ticket {
    ids: Arc<RecentIds>,
    id: Arc<str>,
    settled: bool,
}

impl Ticket {
    /// The event is written: the id is a duplicate from now on.
    pub(crate) fn done(mut self) {
        self.settle(true);
    }

    fn settle(&mut self, written: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut index = self.ids.lock();
        if written {
            index.slots.insert(self.id.clone(), Slot::Done);
        } else {
            index.slots.remove(&self.id);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle(false);
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
                    let mut index = ids2.lock();
                    for id in found {
                        if !index.slots.contains_key(id.as_str()) {
                            index.insert(&id, Slot::Done);
                        }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the ids of the log files are loaded (at once after the
    /// first few moments of a run).
    pub(crate) async fn loaded(&self) {
        if *self.loaded.borrow() {
            return;
        }
        let mut loaded = self.loaded.clone();
        let _ = loaded.wait_for(|l| *l).await;
    }

    /// Claims `id` for a publish (see [`Claim`]). Call [`loaded`](Self::loaded)
    /// first unless the bus has just made the id.
    pub(crate) fn claim(self: &Arc<Self>, id: &str) -> Claim {
        let mut index = self.lock();
        match index.slots.get_mut(id) {
            Some(Slot::Done) => Claim::Duplicate,
            Some(Slot::Pending(tx)) => Claim::Pending(match tx {
                Some(tx) => tx.subscribe(),
                None => {
                    let (new, rx) = watch::channel(());
                    *tx = Some(new);
                    rx
                }
            }),
            None => {
                let id = index.insert(id, Slot::Pending(None));
                Claim::Fresh(Ticket {
                    ids: self.clone(),
                    id,
                    settled: false,
                })
            }
        }
    }

    /// Claims `id` once the load is done: the ticket, `None` for a duplicate,
    /// `Err` while another publish holds it.
    pub(crate) async fn claim_waiting_now(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Option<Ticket>, ()> {
        self.loaded().await;
        match self.claim(id) {
            Claim::Fresh(t) => Ok(Some(t)),
            Claim::Duplicate => Ok(None),
            Claim::Pending(_) => Err(()),
        }
    }

    /// Claims `id`, waiting for the load and for a concurrent publish of the
    /// same id to settle: the ticket, or `None` when the id is a duplicate.
    pub(crate) async fn claim_waiting(self: &Arc<Self>, id: &str) -> Option<Ticket> {
        self.loaded().await;
        loop {
            match self.claim(id) {
                Claim::Fresh(t) => return Some(t),
                Claim::Duplicate => return None,
                Claim::Pending(mut rx) => {
                    // Changed or closed: either way it settled; claim again.
                    let _ = rx.changed().await;
                }
            }
        }
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
    async fn an_id_is_claimed_once_even_by_concurrent_publishes() {
        let ids = RecentIds::start(None);
        let first = ids.claim_waiting("k1").await.expect("fresh");
        // A second publish waits while the first holds the id...
        let second = tokio::spawn({
            let ids = ids.clone();
            async move { ids.claim_waiting("k1").await.is_none() }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        // ...and is a duplicate once the first is written.
        first.done();
        assert!(second.await.unwrap());
        // A refused first try (its ticket dropped) leaves the id free for the next.
        drop(ids.claim_waiting("k2").await.expect("fresh"));
        assert!(ids.claim_waiting("k2").await.is_some());
    }
}
