//! Starting and stopping a bus, and the running state publishers enter.

use super::shared::{EventBus, IN_HANDLER, Run, State, read, write};
use crate::error::{BusError, LogError};
use crate::idempotency::RecentIds;
use crate::journal::EventLog;
use crate::recovery::{self};

use super::dispatch::dispatch_loop;
use super::staging::Pipeline;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

impl EventBus {
    /// dispatcher on the current tokio runtime.
    pub async fn start(&self) -> Result<(), BusError> {
        let _lc = self.inner.lifecycle.lock().await;
        if !matches!(*read(&self.inner.state), State::Idle) {
            return Err(BusError::AlreadyRunning);
        }
        let s = &self.inner.settings;
        let log = match &s.log_dir {
            Some(dir) => Some(EventLog::open(dir.clone(), s.fsync)?),
            None => None,
        };
        // The log is the queue of record: with an in-process queue, record what is
        // done, and dispatch again what a crash left unhandled (crate::recovery).
        let (ledger, plan) = match (&s.log_dir, self.inner.local) {
            (Some(dir), true) => {
                let dir = dir.clone();
                let (ledger, plan) = tokio::task::spawn_blocking(move || recovery::start(&dir))
                    .await
                    .map_err(|e| {
                        LogError::io(
                            "plan the recovery of",
                            "the event log",
                            std::io::Error::other(e),
                        )
                    })??;
                (Some(Arc::new(ledger)), plan)
            }
            _ => (None, None),
        };
        let consumer = self.inner.transport.open().await?;
        let run = Arc::new(Run {
            log,
            permits: Arc::new(Semaphore::new(s.capacity)),
            overflow: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            publishers: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            ledger: ledger.clone(),
            recovered: std::sync::Mutex::new(None),
            recent: RecentIds::start(s.log_dir.as_deref()),
            pipeline: Pipeline::new(),
            cancel_recovery: tokio_util::sync::CancellationToken::new(),
        });
        super::pipeline::spawn_writer(self, &run);
        let dispatcher = tokio::spawn(dispatch_loop(
            self.inner.clone(),
            consumer,
            Arc::new(Semaphore::new(s.concurrency)),
            ledger,
        ));
        if run.ledger.is_some() {
            run.publishers.spawn(super::recovery_feed::recover(
                self.clone(),
                run.clone(),
                plan,
                run.cancel_recovery.clone(),
            ));
        }
        *write(&self.inner.state) = State::Running { run, dispatcher };
        tracing::debug!(transport = self.inner.transport.name(), "event bus started");
        Ok(())
    }

    /// Stops the bus gracefully: every accepted event is handled, and the log
    /// synced and closed, before this returns. Stopping a bus that is not
    /// running does nothing.
    pub async fn stop(&self) -> Result<(), BusError> {
        let _lc = self.inner.lifecycle.lock().await;
        let (run, dispatcher) = {
            let mut st = write(&self.inner.state);
            match std::mem::replace(&mut *st, State::Idle) {
                State::Running { run, dispatcher } => {
                    *st = State::Stopping(run.clone());
                    (run, dispatcher)
                }
                other => {
                    *st = other;
                    return Ok(());
                }
            }
        };
        run.cancel_recovery.cancel();
        run.publishers.close();
        run.publishers.wait().await;
        if self.inner.local {
            // Every accepted event (and its follow-ups) is handled, then the queue closes.
            self.wait_idle().await;
            self.inner.transport.close();
            if let Err(e) = dispatcher.await {
                tracing::error!(error = %crate::error::chain(&e), "event bus dispatcher ended abnormally");
            }
        } else {
            // Remote queue: stop taking events, finish (and acknowledge) those taken;
            // the rest stays on the server for the other consumers or the next start.
            self.inner.transport.close();
            if let Err(e) = dispatcher.await {
                tracing::error!(error = %crate::error::chain(&e), "event bus dispatcher ended abnormally");
            }
            self.wait_idle().await;
        }
        run.pipeline.close().await;
        if let Some(log) = &run.log {
            log.close().await;
        }
        if let Some(ledger) = run.ledger.clone() {
            let plan = run
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            // Every event is done: write the last ids, move the checkpoint.
            let finish = tokio::task::spawn_blocking(move || {
                ledger.close();
                if let Some(plan) = plan {
                    plan.finish();
                }
                ledger.checkpoint_at_end();
            });
            if finish.await.is_err() {
                tracing::error!("moving the recovery checkpoint failed");
            }
        }
        *write(&self.inner.state) = State::Idle;
        tracing::debug!("event bus stopped");
        Ok(())
    }

    /// Waits until no event counted in `inflight` remains.
    pub(super) async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inner.inflight.load(Ordering::SeqCst) == 0 {
                break;
            }
            notified.await;
        }
    }

    /// The running state for a publish: the run, plus a token `stop` waits for.
    pub(super) fn enter(
        &self,
    ) -> Result<
        (
            Arc<Run>,
            Option<tokio_util::task::task_tracker::TaskTrackerToken>,
        ),
        BusError,
    > {
        let in_handler = IN_HANDLER.try_with(|_| ()).is_ok();
        match &*read(&self.inner.state) {
            State::Running { run, .. } => {
                let token = (!in_handler).then(|| run.publishers.token());
                Ok((run.clone(), token))
            }
            State::Stopping(run) if in_handler => Ok((run.clone(), None)),
            State::Stopping(_) => Err(BusError::NotRunning("stopping")),
            State::Idle => Err(BusError::NotRunning("not started")),
        }
    }
}
