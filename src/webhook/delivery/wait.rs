//! Waiting for deliveries to settle (`publish`, `demo` and `webhooks deliver` wait
//! for the deliveries they queued).

use super::{WebhookEngine, lock};
use crate::webhook::error::WebhookError;
use std::time::Duration;

/// How many of a set of deliveries ended which way; see [`WebhookEngine::wait`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaitOutcome {
    /// Delivered (gone from the outbox).
    pub delivered: usize,
    /// Dead letters.
    pub dead: usize,
    /// Still pending when the wait ended.
    pub pending: usize,
}

/// Counts a waiter among the engine's eager ones while it lives.
pub(super) struct EagerWaiter<'a>(Option<&'a std::sync::atomic::AtomicUsize>);

impl<'a> EagerWaiter<'a> {
    pub(super) fn new(count: &'a std::sync::atomic::AtomicUsize, eager: bool) -> Self {
        if eager {
            count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        EagerWaiter(eager.then_some(count))
    }
}

impl Drop for EagerWaiter<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

impl WebhookEngine {
    /// Waits until none of `ids` is pending, or `timeout` passes; counts the
    /// outcomes. The outbox reflects every settlement counted when this returns.
    pub async fn wait(
        &self,
        ids: &[String],
        timeout: Duration,
    ) -> Result<WaitOutcome, WebhookError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let all_watched = {
            let w = lock(&self.inner.watched);
            ids.iter().all(|id| w.contains_key(id))
        };
        if all_watched {
            let o = self.wait_watched(ids, deadline).await;
            // The settlements it counted are in the outbox too when this returns.
            self.inner.outbox.flush().await?;
            return Ok(o);
        }
        let _eager = EagerWaiter::new(&self.inner.eager_waiters, ids.len() <= 16);
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Settled here but perhaps not committed yet: counted from memory
            // (the outbox may still read them as pending); the rest from the outbox.
            let (rest, dead_here) = {
                let recent = lock(&self.inner.settled_recently);
                let mut dead_here = 0;
                let rest: Vec<String> = ids
                    .iter()
                    .filter(|id| match recent.get(id.as_str()) {
                        Some((_, delivered)) => {
                            dead_here += usize::from(!delivered);
                            false
                        }
                        None => true,
                    })
                    .cloned()
                    .collect();
                (rest, dead_here)
            };
            let (pending, dead) = self.inner.outbox.count_states(&rest)?;
            let dead = dead + dead_here;
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                if rest.len() < ids.len() {
                    // What was counted from memory is in the outbox too when this returns.
                    self.inner.outbox.flush().await?;
                }
                return Ok(WaitOutcome {
                    delivered: ids.len() - pending - dead,
                    dead,
                    pending,
                });
            }
            // A few ids: look again as soon as one of this process's deliveries
            // settles. Many: every 50 ms. Rows settled by another process are
            // seen by the polling either way.
            let poll = tokio::time::sleep(Duration::from_millis(if ids.len() <= 16 {
                100
            } else {
                50
            }));
            tokio::select! {
                _ = notified, if ids.len() <= 16 => {}
                _ = poll => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// `wait` for deliveries whose outcome this process records in memory. The
    /// ids are counted when no watched delivery is pending any more, and besides
    /// at most every 250 ms (counting is linear in the number of ids).
    pub(super) async fn wait_watched(
        &self,
        ids: &[String],
        deadline: tokio::time::Instant,
    ) -> WaitOutcome {
        use std::sync::atomic::Ordering;
        let mut last_count: Option<tokio::time::Instant> = None;
        let _eager = EagerWaiter::new(&self.inner.eager_waiters, ids.len() <= 16);
        loop {
            let notified = self.inner.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = tokio::time::Instant::now();
            let count_now = ids.len() <= 16
                || self.inner.watched_pending.load(Ordering::Acquire) == 0
                || last_count.is_none_or(|t| now - t >= Duration::from_millis(250))
                || now >= deadline
                || self.inner.cancel.is_cancelled();
            if count_now {
                last_count = Some(now);
                let mut o = WaitOutcome::default();
                {
                    let w = lock(&self.inner.watched);
                    for id in ids {
                        match w.get(id) {
                            Some(Some(true)) => o.delivered += 1,
                            Some(Some(false)) => o.dead += 1,
                            _ => o.pending += 1,
                        }
                    }
                }
                if o.pending == 0 || now >= deadline || self.inner.cancel.is_cancelled() {
                    let mut w = lock(&self.inner.watched);
                    for id in ids {
                        if let Some(None) = w.remove(id) {
                            self.inner.watched_pending.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                    return o;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}
