//! Calls into Python from the engine's threads, and their end at interpreter exit.
//!
//! A thread that takes the GIL while the interpreter finalizes is ended by Python
//! (`pthread_exit`), which aborts a Rust thread. So every call from an engine
//! thread goes through [`with_python`], which counts it; [`close`] (run by the
//! exit hook, before finalization) refuses new calls and waits, with the GIL
//! released, for those under way.

use pyo3::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// Set at exit: no engine thread calls into Python any more.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Calls from engine threads under way.
static UNDER_WAY: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` with the GIL, unless the interpreter is exiting (`None` then).
pub fn with_python<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> Option<R> {
    UNDER_WAY.fetch_add(1, Ordering::SeqCst);
    let out = if CLOSED.load(Ordering::SeqCst) {
        None
    } else {
        Some(Python::attach(f))
    };
    UNDER_WAY.fetch_sub(1, Ordering::SeqCst);
    out
}

/// Whether calls into Python are still allowed.
pub fn open() -> bool {
    !CLOSED.load(Ordering::SeqCst)
}

/// Refuses further calls and waits for those under way (called with the GIL held).
pub fn close(py: Python<'_>) {
    CLOSED.store(true, Ordering::SeqCst);
    py.detach(|| {
        while UNDER_WAY.load(Ordering::SeqCst) > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}
