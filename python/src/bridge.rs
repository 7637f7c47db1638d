//! Running Python handlers on the asyncio loop that started the bus.
//!
//! The engine dispatches on its tokio threads; a Python handler must run on the
//! loop. Each handler run is queued here as a [`Job`], and the loop is woken
//! (`call_soon_threadsafe`) once per batch, not per event: `pm/events/_pump.py`
//! takes every queued job, calls each handler with its `Event`, drives the
//! coroutine (to its end when it does not wait, else as an asyncio task), and
//! reports the outcomes back in one call. An exception in a handler becomes the
//! handler's error in the engine: logged and counted as a Rust handler's, and
//! the other handlers go on.

use crate::event::PyEvent;
use async_trait::async_trait;
use pm_events::Event;
use pm_events::handler::{Handler, HandlerError};
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// One handler run waiting for the loop.
struct Job {
    handler: Arc<Py<PyAny>>,
    event: Event,
    done: oneshot::Sender<Result<(), String>>,
}

/// The jobs of one bus and the loop that runs them.
#[derive(Default)]
pub struct Bridge {
    /// Queued by the engine's handler tasks, taken by the pump on the loop.
    jobs: Mutex<Vec<(u64, Job)>>,
    /// Jobs handed to the pump and not finished: completed by `finish`.
    running: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    next: AtomicU64,
    /// A wake-up of the loop is on its way (cleared by the pump when it runs).
    scheduled: AtomicBool,
    /// The loop and the pump (`_pump.pump(bridge)` bound to it); set by `start`.
    target: Mutex<Option<(Py<PyAny>, Py<PyAny>)>>,
}

impl Bridge {
    /// Runs jobs on `event_loop` from now on, by calling `pump` there.
    /// Called with the GIL held (from `start`), like every use of `target`.
    pub fn attach(&self, event_loop: Py<PyAny>, pump: Py<PyAny>) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = Some((event_loop, pump));
        self.scheduled.store(false, Ordering::SeqCst);
    }

    /// Jobs queued or running that no loop will run (it is closed or gone).
    pub fn stranded(&self) -> usize {
        let queued = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let running = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        let closed = Python::attach(|py| {
            match &*self.target.lock().unwrap_or_else(PoisonError::into_inner) {
                Some((lp, _)) => lp
                    .bind(py)
                    .call_method0("is_closed")
                    .and_then(|v| v.is_truthy())
                    .unwrap_or(true),
                None => true,
            }
        });
        if closed { queued + running } else { 0 }
    }

    fn push(&self, job: Job) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, job));
        if self.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        crate::python_calls::with_python(|py| {
            // Taken with the GIL held, as everywhere: no thread waits for the
            // GIL while holding this lock.
            let target = self
                .target
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(|(lp, pump)| (lp.clone_ref(py), pump.clone_ref(py)));
            let Some((lp, pump)) = target else {
                tracing::error!(
                    "a Python handler was dispatched before the bus was started on a loop"
                );
                return;
            };
            if let Err(e) = lp
                .bind(py)
                .call_method1("call_soon_threadsafe", (pump.bind(py),))
            {
                // A closed loop: the job stays queued; the event is not marked
                // handled and is dispatched again on the next start.
                tracing::warn!(error = %e, "the asyncio loop that started the bus cannot run Python handlers any more");
            }
        });
    }
}

/// A job as the pump gets it: its id, the handler and the event.
type JobForPython = (u64, Py<PyAny>, Py<PyEvent>);

/// The pump's side of the bridge (`pm/events/_pump.py` calls these).
#[pyclass(name = "Bridge", module = "pm.events._native")]
pub struct PyBridge(pub Arc<Bridge>);

#[pymethods]
impl PyBridge {
    /// Every queued job as `(id, handler, Event)`; the next job wakes the loop again.
    fn take(&self, py: Python<'_>) -> PyResult<Vec<JobForPython>> {
        self.0.scheduled.store(false, Ordering::SeqCst);
        let jobs = std::mem::take(&mut *self.0.jobs.lock().unwrap_or_else(PoisonError::into_inner));
        let mut out = Vec::with_capacity(jobs.len());
        let mut running = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, job) in jobs {
            let event = Py::new(py, PyEvent::from_event(py, &job.event)?)?;
            out.push((id, job.handler.clone_ref(py), event));
            running.insert(id, job.done);
        }
        Ok(out)
    }

    /// The outcomes of jobs: `(id, None)` for success, `(id, "message")` for an exception.
    fn finish(&self, outcomes: Vec<(u64, Option<String>)>) {
        let mut running = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (id, error) in outcomes {
            if let Some(done) = running.remove(&id) {
                let _ = done.send(error.map_or(Ok(()), Err));
            }
        }
    }
}

/// A Python callable subscribed on the bus.
pub struct PyHandler {
    pub callable: Arc<Py<PyAny>>,
    pub bridge: Arc<Bridge>,
    pub name: String,
}

#[async_trait]
impl Handler for PyHandler {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let (done, outcome) = oneshot::channel();
        self.bridge.push(Job {
            handler: self.callable.clone(),
            event,
            done,
        });
        match outcome.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(HandlerError::from(message)),
            Err(_) => Err(HandlerError::from(
                "the handler's run was abandoned".to_string(),
            )),
        }
    }

    fn name(&self) -> &str {
        &self.name
    }
}
