//! Interpreter exit: every bus still running is stopped, so what its handlers
//! can still run is handled and its logs are flushed — the specification's
//! "Basic Integration" publishes and ends without `stop()`.
//!
//! Python handlers can no longer run once their asyncio loop is closed; the
//! events waiting for them are left unfinished in the event log and are
//! dispatched again when a bus next starts on that log directory.

use crate::bridge::Bridge;
use pm_events::EventBus;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Every bus made in this process, with the bridge of its Python handlers.
static BUSES: Mutex<Vec<(EventBus, Arc<Bridge>)>> = Mutex::new(Vec::new());

/// How long the engine's handlers may show no progress, while only stranded
/// Python jobs remain, before exit gives up waiting.
const QUIET: Duration = Duration::from_millis(100);

/// How long exit waits for the engine's own handlers at most.
const EXIT_WAIT: Duration = Duration::from_secs(10);

/// Notes `bus` and its bridge, to stop it at exit.
pub fn remember(bus: &EventBus, bridge: &Arc<Bridge>) {
    BUSES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((bus.clone(), bridge.clone()));
}

/// Handler runs ended so far (any outcome).
fn runs_done(bus: &EventBus) -> u64 {
    let s = bus.stats();
    s.handled + s.failed + s.panicked + s.timed_out
}

/// Stops every running bus (registered with `atexit` by `pm.events`). Returns
/// how many were stopped.
#[pyfunction]
pub fn _stop_all(py: Python<'_>) -> usize {
    let buses: Vec<(EventBus, Arc<Bridge>)> = BUSES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(b, _)| b.is_running())
        .cloned()
        .collect();
    let n = buses.len();
    for (bus, bridge) in buses {
        let deadline = Instant::now() + EXIT_WAIT;
        let watched = bus.clone();
        let stopping = crate::awaitable::runtime().spawn(async move { bus.stop().await });
        let (mut last, mut since) = (runs_done(&watched), Instant::now());
        // Python handlers cannot run now (the loop is done): wait for the
        // engine's handlers only, and leave the rest for the next start.
        while !stopping.is_finished() && Instant::now() < deadline {
            py.detach(|| std::thread::sleep(Duration::from_millis(5)));
            let done = runs_done(&watched);
            if done != last {
                (last, since) = (done, Instant::now());
            }
            let stranded = bridge.stranded() > 0;
            if stranded && watched.queue_len() == 0 && since.elapsed() >= QUIET {
                break;
            }
        }
    }
    // Deliveries in flight end (what is pending stays in the outbox).
    py.detach(crate::system::shutdown);
    // The interpreter is going away: the engine's threads must not call into
    // Python any more, and those doing so now finish first.
    crate::python_calls::close(py);
    n
}
