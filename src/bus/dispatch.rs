//! The dispatcher: takes accepted events from the transport and runs their handlers.

use super::shared::{IN_HANDLER, Inner};
use super::subscriptions::matching;
use super::table::{SubList, Subscription};
use crate::event::Event;
use crate::recovery::Ledger;
use crate::transport::{Ack, Consumer, Delivery};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use tokio::sync::Semaphore;

pub(super) fn finish_one(inner: &Inner) {
    finish(inner, 1);
}

/// Counts `n` events out of `inflight` (handled, or refused after they were
/// counted) and wakes `stop` when none is left.
pub(super) fn finish(inner: &Inner, n: usize) {
    if inner.inflight.fetch_sub(n, Ordering::SeqCst) == n {
        inner.idle.notify_waiters();
    }
}

/// Calls [`finish_one`] when dropped: a handler task that ends in any way
/// (even cancelled at runtime shutdown) still counts as finished for `stop`.
pub(super) struct Finished(Arc<Inner>);

impl Drop for Finished {
    fn drop(&mut self) {
        finish_one(&self.0);
    }
}

/// Most ready events one handler task takes at once. At most 30: up to that
/// many, `join_all` polls its futures in place; above, it allocates a task
/// node per future (a `FuturesOrdered`), which costs more than the handlers.
pub(super) const BURST: usize = 30;

pub(super) async fn dispatch_loop(
    inner: Arc<Inner>,
    mut consumer: Box<dyn Consumer>,
    slots: Arc<Semaphore>,
    ledger: Option<Arc<Ledger>>,
) {
    // A burst never needs more slots than exist (`concurrency` may be below BURST).
    let max_burst = BURST.min(inner.settings.concurrency).max(1);
    let mut burst: Vec<(Delivery, SubList)> = Vec::with_capacity(max_burst);
    while let Some(first) = consumer.next().await {
        // Take what else is ready now: under load, one task runs a burst of events
        // (their handlers still concurrent); when idle, a burst is one event.
        let mut next = Some(first);
        while let Some(delivery) = next {
            inner.stats.dispatched.fetch_add(1, Ordering::Relaxed);
            if !inner.local {
                // Remote events are counted from when this process takes them.
                inner.inflight.fetch_add(1, Ordering::SeqCst);
            }
            let subs = matching(&inner, &delivery.event);
            if subs.is_empty() {
                inner.stats.unhandled.fetch_add(1, Ordering::Relaxed);
                if let Some(l) = &ledger {
                    l.done(&delivery.event.event_id);
                }
                if delivery.event.redelivered {
                    inner.recovered_done.fetch_add(1, Ordering::Release);
                }
                ack(delivery).await;
                finish_one(&inner);
            } else {
                burst.push((delivery, subs));
            }
            next = if burst.len() < max_burst {
                consumer.try_next()
            } else {
                None
            };
        }
        if burst.is_empty() {
            continue;
        }
        let Ok(slot) = slots.clone().acquire_many_owned(burst.len() as u32).await else {
            break;
        };
        let items = std::mem::replace(&mut burst, Vec::with_capacity(max_burst));
        let urgent = items
            .iter()
            .any(|(d, _)| d.priority == crate::transport::Priority::High);
        let inner2 = inner.clone();
        let ledger2 = ledger.clone();
        // Made before the spawn: they count the events finished even if the task never runs.
        let done: Vec<Finished> = items.iter().map(|_| Finished(inner.clone())).collect();
        tokio::spawn(async move {
            if items.len() == 1 {
                for (d, subs) in items {
                    run_handlers(&inner2, d, subs, ledger2.as_deref()).await;
                }
            } else {
                futures_util::future::join_all(
                    items
                        .into_iter()
                        .map(|(d, subs)| run_handlers(&inner2, d, subs, ledger2.as_deref())),
                )
                .await;
            }
            drop(slot);
            drop(done);
        });
        if urgent {
            // The runtime runs the task spawned last first; the bursts spawned
            // after this one would otherwise start before it whenever handlers
            // finish quickly. Yielding lets a high-priority burst start now.
            tokio::task::yield_now().await;
        }
    }
}

pub(super) async fn ack(delivery: Delivery) {
    let Delivery { event, ack, .. } = delivery;
    acknowledge(ack, &event.event_id).await;
}

pub(super) async fn acknowledge(ack: Ack, event_id: &str) {
    if let Err(e) = ack.done().await {
        tracing::error!(%event_id, error = %crate::error::chain(&e), "acknowledging an event failed; it may be delivered again");
    }
}

pub(super) async fn run_handlers(
    inner: &Inner,
    delivery: Delivery,
    subs: SubList,
    ledger: Option<&Ledger>,
) {
    let Delivery { event, ack, .. } = delivery;
    let meta = (event.event_id.clone(), event.event_type.clone());
    let redelivered = event.redelivered;
    if let [only] = &*subs {
        run_one(inner, only, event, &meta).await;
    } else {
        futures_util::future::join_all(
            subs.iter().map(|s| run_one(inner, s, event.clone(), &meta)),
        )
        .await;
    }
    if let Some(l) = ledger {
        l.done(&meta.0);
    }
    if redelivered {
        inner.recovered_done.fetch_add(1, Ordering::Release);
    }
    acknowledge(ack, &meta.0).await;
}

pub(super) async fn run_one(
    inner: &Inner,
    sub: &Subscription,
    mut event: Event,
    meta: &(String, String),
) {
    let (event_id, event_type) = meta;
    // The handler's span, in the event's trace; what the handler queues (webhooks)
    // continues from it.
    let mut span = crate::telemetry::start(
        "handle",
        crate::telemetry::Kind::Handle,
        event.trace.as_deref(),
        || {
            vec![
                opentelemetry::KeyValue::new("pm.handler", sub.handler.name().to_string()),
                opentelemetry::KeyValue::new("pm.event_type", event_type.clone()),
                opentelemetry::KeyValue::new("pm.event_id", event_id.clone()),
            ]
        },
    );
    if let Some(tp) = span.traceparent() {
        event.trace = Some(tp.to_string());
    }
    let fut = IN_HANDLER.scope(
        (),
        AssertUnwindSafe(sub.handler.handle(event)).catch_unwind(),
    );
    let c = &inner.stats;
    let started = inner.settings.metrics.then(std::time::Instant::now);
    // Most handlers finish at their first poll: the timer (and its clock read)
    // is only set up for one that has to wait.
    let mut fut = std::pin::pin!(fut);
    let result = match std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        Poll::Ready(r) => Ok(r),
        Poll::Pending => tokio::time::timeout(inner.settings.handler_timeout, fut).await,
    };
    if let Some(t) = started {
        let outcome = match &result {
            Ok(Ok(Ok(()))) => "ok",
            Ok(Ok(Err(_))) => "error",
            Ok(Err(_)) => "panic",
            Err(_) => "timeout",
        };
        metrics::counter!("pm_events_handled_total", "type" => event_type.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("pm_events_handler_duration_seconds", "type" => event_type.clone())
            .record(t.elapsed().as_secs_f64());
    }
    if !matches!(result, Ok(Ok(Ok(())))) {
        span.fail(|| "the handler failed, panicked or timed out".to_string());
    }
    match result {
        Ok(Ok(Ok(()))) => {
            c.handled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Ok(Err(e))) => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%event_id, %event_type, handler = sub.handler.name(), error = %crate::error::chain(&*e), "handler failed");
        }
        Ok(Err(panic)) => {
            c.panicked.fetch_add(1, Ordering::Relaxed);
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".into());
            tracing::error!(%event_id, %event_type, handler = sub.handler.name(), panic = %msg, "handler panicked");
        }
        Err(_) => {
            c.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%event_id, %event_type, handler = sub.handler.name(), timeout_ms = inner.settings.handler_timeout.as_millis() as u64, "handler timed out");
        }
    }
}
