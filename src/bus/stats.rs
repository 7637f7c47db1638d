//! The counters of a bus ([`BusStats`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of a bus since it was built; see [`EventBus::stats`](crate::EventBus::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Events accepted (logged and queued).
    pub published: u64,
    /// Events taken by the dispatcher.
    pub dispatched: u64,
    /// Events no subscription matched.
    pub unhandled: u64,
    /// Handler runs that returned `Ok`.
    pub handled: u64,
    /// Handler runs that returned `Err`.
    pub failed: u64,
    /// Handler runs that panicked.
    pub panicked: u64,
    /// Handler runs stopped at the handler timeout.
    pub timed_out: u64,
    /// Events dispatched again at start because a crash left them unhandled.
    pub redelivered: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) redelivered: AtomicU64,
    pub(super) published: AtomicU64,
    pub(super) dispatched: AtomicU64,
    pub(super) unhandled: AtomicU64,
    pub(super) handled: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) panicked: AtomicU64,
    pub(super) timed_out: AtomicU64,
}

impl Counters {
    /// A snapshot of the counters.
    pub(super) fn snapshot(&self) -> BusStats {
        let s = self;
        BusStats {
            published: s.published.load(Ordering::Relaxed),
            dispatched: s.dispatched.load(Ordering::Relaxed),
            unhandled: s.unhandled.load(Ordering::Relaxed),
            handled: s.handled.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            panicked: s.panicked.load(Ordering::Relaxed),
            timed_out: s.timed_out.load(Ordering::Relaxed),
            redelivered: s.redelivered.load(Ordering::Relaxed),
        }
    }
}
