//! Recovery while the bus runs: dispatching again the events a crash left
//! unhandled — first those of the start's plan, then, every
//! [`TAKEOVER_INTERVAL`], those of a run that died beside this one once this
//! one is the only process left on the log directory (see [`crate::recovery`]).

use super::shared::{EventBus, Run};
use crate::event::Event;
use crate::recovery::{self, Plan};
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often a running bus looks for a dead run to take over.
pub const TAKEOVER_INTERVAL: Duration = Duration::from_secs(1);

/// Events read from the log per hand-over to the transport.
const CHUNK: usize = 256;

/// The recovery task of a run: owned by the run's publishers tracker (so
/// `stop` waits for it), ended by `stop` through `cancel`.
pub(super) async fn recover(
    bus: EventBus,
    run: Arc<Run>,
    first: Option<Plan>,
    cancel: CancellationToken,
) {
    if let Some(plan) = first {
        feed(&bus, &run, plan, &cancel).await;
    }
    let (Some(ledger), Some(dir)) = (run.ledger.clone(), bus.inner.settings.log_dir.clone()) else {
        return;
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(TAKEOVER_INTERVAL) => {}
        }
        let (ledger2, dir2, run2) = (ledger.clone(), dir.clone(), run.clone());
        let planned = tokio::task::spawn_blocking(move || {
            if !recovery::has_dead_run(&dir2, &ledger2) {
                return Ok(None);
            }
            recovery::take_over(&dir2, &ledger2, || {
                run2.log
                    .as_ref()
                    .map(|l| l.own_ranges())
                    .unwrap_or_default()
            })
        })
        .await;
        match planned {
            Ok(Ok(Some(plan))) => feed(&bus, &run, plan, &cancel).await,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %crate::error::chain(&e), "cannot look for a dead run to take over");
            }
            Err(e) => tracing::error!(error = %e, "the takeover planner failed"),
        }
    }
}

/// Queues the plan's events (read by a blocking thread, in log order), each
/// chunk waiting for capacity like a publish; once they are all handled,
/// finishes the plan (moves the checkpoint, or marks the dead runs' files
/// finished). Cancelled while the events are handled, it hands the plan to
/// `stop`, which finishes it once every event is done.
async fn feed(bus: &EventBus, run: &Arc<Run>, plan: Plan, cancel: &CancellationToken) {
    let takeover = plan.is_takeover();
    let chunk_len = CHUNK.min(bus.inner.settings.capacity).max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Event>>(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(chunk_len);
        let n = plan.for_each_pending(|e| {
            chunk.push(e);
            chunk.len() < chunk_len
                || tx
                    .blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(chunk_len)))
                    .is_ok()
        });
        if n.is_some() && !chunk.is_empty() && tx.blocking_send(chunk).is_err() {
            return (plan, None);
        }
        (plan, n)
    });
    let mut fed = 0u64;
    // Fed to the end even while the bus stops (`stop` waits): a run started
    // only to recover, with nothing to publish, recovers everything.
    while let Some(chunk) = rx.recv().await {
        let Ok(permit) = run
            .permits
            .clone()
            .acquire_many_owned(chunk.len() as u32)
            .await
        else {
            break;
        };
        let n = chunk.len() as u64;
        if let Err(e) = bus.enqueue_batch(chunk, permit).await {
            tracing::error!(error = %crate::error::chain(&e), "cannot dispatch recovered events; they are recovered at the next start");
            return;
        }
        fed += n;
        bus.inner.stats.redelivered.fetch_add(n, Ordering::Relaxed);
        if bus.inner.settings.metrics {
            metrics::counter!("pm_events_redelivered_total").increment(n);
        }
    }
    let plan = match reader.await {
        Ok((plan, Some(_))) => plan,
        Ok((_, None)) => return,
        Err(e) => {
            tracing::error!(error = %e, "the recovery reader failed");
            return;
        }
    };
    if fed > 0 {
        tracing::info!(
            events = fed,
            takeover,
            "dispatched again the events a crash left unhandled"
        );
    }
    // Finished once every redelivered event so far is handled (plans run one
    // after the other, so the running totals say it).
    let target = bus.inner.stats.redelivered.load(Ordering::Relaxed);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while bus.inner.recovered_done.load(Ordering::Acquire) < target {
        tokio::select! {
            () = cancel.cancelled() => {
                *run.recovered.lock().unwrap_or_else(PoisonError::into_inner) = Some(plan);
                return;
            }
            _ = tick.tick() => {}
        }
    }
    let ledger = run.ledger.clone();
    let finish = move || {
        if let Some(ledger) = ledger {
            // The taken-over events' ids reach this run's file before the dead
            // runs' files are marked finished.
            ledger.flush_now();
        }
        plan.finish();
    };
    if tokio::task::spawn_blocking(finish).await.is_err() {
        tracing::error!("finishing a recovery failed");
    }
}
