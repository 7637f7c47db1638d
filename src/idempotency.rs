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
//! The ids this process made ([`crate::event::minted`], what `Event::new`
//! gives) are remembered as one bit each in a ring indexed by their counter:
//! no hashing, and the bits touched are close together, so remembering every
//! accepted event costs a publisher almost nothing. Other ids (from callers,
//! other processes, earlier runs) are kept as 128-bit fingerprints in 16
//! shards with a lock each.
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

/// Shards of the index: publishers of different ids rarely meet on one lock.
const SHARDS: usize = 16;

/// An id as the index keeps it: 128 bits of two keyed hashes of its text (no
/// copy of the text; two different ids share one with a chance of 2^-128).
type Fingerprint = u128;

fn fingerprint(id: &str) -> Fingerprint {
    use std::hash::{BuildHasher, Hasher};
    // Fixed keys: the same id has the same fingerprint in every shard and run.
    let half = |seed: u8| {
        let mut h =
            std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
                .build_hasher();
        h.write_u8(seed);
        h.write(id.as_bytes());
        h.finish()
    };
    (u128::from(half(0x5a)) << 64) | u128::from(half(0xa5))
}

/// The hasher of fingerprints: they are hashes already.
#[derive(Default)]
struct Passthrough(u64);

impl std::hash::Hasher for Passthrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type FingerprintMap<V> = HashMap<Fingerprint, V, std::hash::BuildHasherDefault<Passthrough>>;

/// The counters of this process's own ids ([`crate::event::minted`]) that
/// were accepted: one bit each, over the last [`RING_WORDS`] × 64 counters.
/// Counters are made in order, so the bits touched are close together.
#[derive(Default)]
struct Ring {
    /// The counter of the first bit of `words[0]`.
    base: u64,
    words: VecDeque<u64>,
}

/// Rings of this process's own ids.
const OWN_RINGS: usize = 4;

/// Words of a ring: 2^16 × 64 = 4,194,304 bits (512 KiB).
const RING_WORDS: usize = 1 << 16;

impl Ring {
    /// Sets `counter`'s bit; whether it was set already. A counter older than
    /// the ring is reported as not set (it is older than [`MAX_IDS`] ids).
    fn test_and_set(&mut self, counter: u64) -> bool {
        if counter < self.base {
            return false;
        }
        let window = (RING_WORDS * 64) as u64;
        if counter - self.base >= window + (self.words.len() as u64) * 64 {
            // Far ahead of every bit kept (many ids made, few accepted here):
            // start the ring again just below it.
            self.words.clear();
            self.base = (counter - counter % 64).saturating_sub(window - 64);
        }
        while ((counter - self.base) / 64) as usize >= self.words.len() {
            self.words.push_back(0);
            if self.words.len() > RING_WORDS {
                self.words.pop_front();
                self.base += 64;
            }
        }
        let word = ((counter - self.base) / 64) as usize;
        let bit = 1u64 << ((counter - self.base) % 64);
        let Some(w) = self.words.get_mut(word) else {
            return false;
        };
        let was = *w & bit != 0;
        *w |= bit;
        was
    }

    fn clear(&mut self, counter: u64) {
        if counter >= self.base {
            let word = ((counter - self.base) / 64) as usize;
            if let Some(w) = self.words.get_mut(word) {
                *w &= !(1u64 << ((counter - self.base) % 64));
            }
        }
    }
}

/// The ids accepted recently; see the module docs. Owned by a running bus
/// (one per run); tickets hold it until they settle.
pub(crate) struct RecentIds {
    shards: [Mutex<Index>; SHARDS],
    /// This process's own ids that were accepted: counter `c` in ring `c % 4`
    /// as bit `c / 4`, so publishers of consecutive ids take different locks.
    own: [Mutex<Ring>; OWN_RINGS],
    /// `true` once the log's ids are loaded.
    loaded: watch::Receiver<bool>,
    /// The same, read without a lock by every publish once it is true.
    loaded_now: std::sync::atomic::AtomicBool,
}

/// The state of one remembered id.
enum Slot {
    /// Its event is written.
    Done,
    /// A publish holds its ticket. The sender exists once someone waits: the
    /// ticket settling replaces the slot, which drops it and wakes them.
    Pending(Option<watch::Sender<()>>),
}

/// One shard: its ids, and the order they came in (seconds since the epoch).
#[derive(Default)]
struct Index {
    slots: FingerprintMap<Slot>,
    order: VecDeque<(u32, Fingerprint)>,
}

impl Index {
    fn purge(&mut self, now: f64) {
        let horizon = (now - WINDOW.as_secs_f64()).max(0.0) as u32;
        while let Some((at, fp)) = self.order.front() {
            if *at < horizon || self.order.len() > MAX_IDS / SHARDS {
                if matches!(self.slots.get(fp), Some(Slot::Done)) {
                    self.slots.remove(fp);
                }
                self.order.pop_front();
            } else {
                break;
            }
        }
    }

    fn insert(&mut self, fp: Fingerprint, slot: Slot) {
        let now = now_unix();
        self.slots.insert(fp, slot);
        self.order.push_back((now as u32, fp));
        self.purge(now);
    }
}

/// The outcome of [`RecentIds::claim_as`].
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
    fp: Fingerprint,
    settled: bool,
    /// Counted as written since the claim: `done` has nothing left to do.
    optimistic: bool,
    /// The counter of one of this process's own ids (kept in the ring, not the index).
    own: Option<u64>,
}

/// How a publish claims its id.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claiming {
    /// The id is pending until the event is written; a concurrent publish of
    /// it waits for the outcome (`publish_once`).
    Waiting,
    /// The id counts as written at once, and is forgotten if the write fails:
    /// one lock per event instead of two. A concurrent publish of the same id
    /// is a duplicate at once (the other publish calls).
    Optimistic,
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
        if written && self.optimistic {
            return;
        }
        if let Some(c) = self.own {
            if !written {
                let (bit, mut ring) = self.ids.own_ring(c);
                ring.clear(bit);
            }
            return;
        }
        let mut index = self.ids.shard(self.fp);
        if written {
            index.slots.insert(self.fp, Slot::Done);
        } else {
            index.slots.remove(&self.fp);
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
            shards: std::array::from_fn(|_| Mutex::new(Index::default())),
            own: std::array::from_fn(|_| Mutex::new(Ring::default())),
            loaded_now: std::sync::atomic::AtomicBool::new(log_dir.is_none()),
            loaded: rx,
        });
        if let Some(dir) = log_dir {
            let (dir, ids2) = (dir.to_path_buf(), ids.clone());
            let spawned = std::thread::Builder::new()
                .name("pm-events-recent-ids".into())
                .spawn(move || {
                    for id in load(&dir) {
                        if let Some(c) = crate::event::minted::counter_of(&id) {
                            let (bit, mut ring) = ids2.own_ring(c);
                            ring.test_and_set(bit);
                            continue;
                        }
                        let fp = fingerprint(&id);
                        let mut index = ids2.shard(fp);
                        if !index.slots.contains_key(&fp) {
                            index.insert(fp, Slot::Done);
                        }
                    }
                    ids2.loaded_now
                        .store(true, std::sync::atomic::Ordering::Release);
                    let _ = tx.send(true);
                });
            if spawned.is_err() {
                ids.loaded_now
                    .store(true, std::sync::atomic::Ordering::Release);
                tracing::warn!(
                    "cannot start loading the recent event ids; repeats are recognised only within this run"
                );
            }
        }
        ids
    }

    /// The ring of this process's id counter `c`, locked, and `c`'s bit in it.
    fn own_ring(&self, c: u64) -> (u64, std::sync::MutexGuard<'_, Ring>) {
        let ring = self.own[(c % OWN_RINGS as u64) as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (c / OWN_RINGS as u64, ring)
    }

    /// The shard of `fp`, locked.
    fn shard(&self, fp: Fingerprint) -> std::sync::MutexGuard<'_, Index> {
        // The top bits choose the shard; the map hashes by the low ones.
        self.shards[(fp >> 124) as usize % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until the ids of the log files are loaded (at once after the
    /// first few moments of a run).
    pub(crate) async fn loaded(&self) {
        if self.loaded_now.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut loaded = self.loaded.clone();
        let _ = loaded.wait_for(|l| *l).await;
    }

    /// Claims `id` for a publish, the way `how` says (see [`Claim`]). Call
    /// [`loaded`](Self::loaded) first unless the bus has just made the id.
    pub(crate) fn claim_as(self: &Arc<Self>, id: &str, how: Claiming) -> Claim {
        if let Some(c) = crate::event::minted::counter_of(id) {
            // One of this process's own ids: a bit of the ring, claimed at once
            // (made here, so no other publish can be writing it but a repeat).
            // An id of this process that it has not made yet can only be a
            // guess: taking its bit now would make the real event a repeat
            // later, so nothing is written for it.
            if c >= crate::event::minted::made() {
                return Claim::Duplicate;
            }
            let was = {
                let (bit, mut ring) = self.own_ring(c);
                ring.test_and_set(bit)
            };
            return if was {
                Claim::Duplicate
            } else {
                Claim::Fresh(Ticket {
                    ids: self.clone(),
                    fp: 0,
                    settled: false,
                    optimistic: true,
                    own: Some(c),
                })
            };
        }
        let fp = fingerprint(id);
        let mut index = self.shard(fp);
        match index.slots.get_mut(&fp) {
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
                let optimistic = how == Claiming::Optimistic;
                index.insert(
                    fp,
                    if optimistic {
                        Slot::Done
                    } else {
                        Slot::Pending(None)
                    },
                );
                Claim::Fresh(Ticket {
                    ids: self.clone(),
                    fp,
                    // An optimistic claim is settled as written already; its
                    // drop without `done` still forgets it (see `Drop`).
                    settled: false,
                    optimistic,
                    own: None,
                })
            }
        }
    }

    /// Claims `id` once the load is done: the ticket, `None` for a duplicate,
    /// `Err` while another publish holds it.
    pub(crate) async fn claim_waiting_now(
        self: &Arc<Self>,
        id: &str,
        how: Claiming,
    ) -> Result<Option<Ticket>, ()> {
        self.loaded().await;
        match self.claim_as(id, how) {
            Claim::Fresh(t) => Ok(Some(t)),
            Claim::Duplicate => Ok(None),
            Claim::Pending(_) => Err(()),
        }
    }

    /// Claims `id`, waiting for the load and for a concurrent publish of the
    /// same id to settle: the ticket, or `None` when the id is a duplicate.
    pub(crate) async fn claim_waiting(self: &Arc<Self>, id: &str, how: Claiming) -> Option<Ticket> {
        self.loaded().await;
        loop {
            match self.claim_as(id, how) {
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

    #[test]
    fn the_ring_remembers_counters_and_survives_far_jumps() {
        let mut r = Ring::default();
        assert!(!r.test_and_set(5));
        assert!(r.test_and_set(5));
        // Far ahead (many ids made elsewhere, none accepted here): no endless loop.
        let far = 5 + 10 * (RING_WORDS as u64) * 64;
        assert!(!r.test_and_set(far));
        assert!(r.test_and_set(far));
        assert!(!r.test_and_set(far - 1000));
        assert!(r.test_and_set(far - 1000));
        r.clear(far);
        assert!(!r.test_and_set(far));
        assert!(r.words.len() <= RING_WORDS);
    }

    #[tokio::test]
    async fn an_id_is_claimed_once_even_by_concurrent_publishes() {
        let ids = RecentIds::start(None);
        let first = ids
            .claim_waiting("k1", Claiming::Waiting)
            .await
            .expect("fresh");
        // A second publish waits while the first holds the id...
        let second = tokio::spawn({
            let ids = ids.clone();
            async move { ids.claim_waiting("k1", Claiming::Waiting).await.is_none() }
        });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        // ...and is a duplicate once the first is written.
        first.done();
        assert!(second.await.unwrap());
        // A refused first try (its ticket dropped) leaves the id free for the next.
        drop(
            ids.claim_waiting("k2", Claiming::Optimistic)
                .await
                .expect("fresh"),
        );
        assert!(ids.claim_waiting("k2", Claiming::Waiting).await.is_some());
    }
}
