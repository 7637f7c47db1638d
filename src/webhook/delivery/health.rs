//! How each endpoint is doing: the figures of the last hour, its circuit breaker,
//! and when it has been failing long enough to be disabled.
//!
//! - **Figures**: per route (endpoint id or route variable), the attempts of the last
//!   hour (at most [`MAX_SAMPLES`] kept): success rate, p50 and p99 latency, the last
//!   error and when, the last success.
//! - **Breaker**: after [`BREAKER_THRESHOLD`] failures in a row (no answer, 408, 429,
//!   5xx) the breaker opens: the endpoint's deliveries wait, without spending their
//!   retries, until a single probe — the next delivery due — is let through after
//!   [`BREAKER_FIRST_WAIT`], doubling after each failed probe up to
//!   [`BREAKER_MAX_WAIT`]. The first success closes it.
//! - **Disabling**: a route failing without a success for the configured time
//!   (`PM_ENDPOINT_DISABLE_AFTER`, default 5 days) is reported as due to be disabled
//!   (the engine disables managed endpoints). The time is measured by the running
//!   process: a restart starts it again.

use crate::timespec::rfc3339;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Failures in a row that open the breaker.
pub const BREAKER_THRESHOLD: u32 = 5;
/// The breaker's first wait before a probe.
pub const BREAKER_FIRST_WAIT: Duration = Duration::from_secs(2);
/// The breaker's longest wait between probes.
pub const BREAKER_MAX_WAIT: Duration = Duration::from_secs(300);
/// Attempts kept per route for the figures (the last hour, at most this many).
pub const MAX_SAMPLES: usize = 10_000;
const WINDOW_SECS: f64 = 3600.0;

/// The state of a route's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Breaker {
    /// Deliveries go.
    Closed,
    /// Deliveries wait for the probe.
    Open,
    /// One probe is under way.
    HalfOpen,
}

/// What a delivery due now may do.
pub(super) enum Gate {
    /// Go (the breaker is closed).
    Go,
    /// Go as the probe of an open breaker.
    Probe,
    /// Wait until then, without an attempt.
    Wait(Instant),
}

/// What an attempt's outcome changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// Nothing to act on.
    None,
    /// The breaker opened (or a probe failed).
    Opened,
    /// The breaker closed.
    Closed,
    /// Failing without a success for longer than the limit: disable it.
    DisableDue,
}

#[derive(Default)]
struct RouteHealth {
    /// (Unix time, success, milliseconds) of the attempts of the last hour.
    samples: VecDeque<(f64, bool, f64)>,
    in_a_row: u32,
    /// Since when it has failed without a success (Unix seconds).
    failing_since: Option<f64>,
    last_error: Option<(String, f64)>,
    last_success: Option<f64>,
    /// When the open breaker lets the probe through, and the wait after that.
    open: Option<(Instant, Duration)>,
    probing: bool,
    /// The endpoint's `updated_at` when last gated.
    version: Option<String>,
}

/// The health of every route this process delivers to.
pub(super) struct Health {
    /// Route → its health; updated after each attempt, read by `gate` and `view`.
    routes: Mutex<HashMap<String, RouteHealth>>,
    /// `PM_ENDPOINT_DISABLE_AFTER`.
    disable_after: Duration,
}

/// One route's figures, as `GET /api/v1/endpoints/{id}` shows them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthView {
    /// Attempts in the last hour.
    pub attempts_1h: usize,
    /// Share of them delivered (`null` without attempts).
    pub success_rate_1h: Option<f64>,
    /// Median attempt time, milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile attempt time, milliseconds.
    pub p99_ms: Option<f64>,
    /// The last failure's reason.
    pub last_error: Option<String>,
    /// When it happened (RFC 3339).
    pub last_error_at: Option<String>,
    /// The last success (RFC 3339).
    pub last_success_at: Option<String>,
    /// Failing without a success since (RFC 3339).
    pub failing_since: Option<String>,
    /// Failures in a row.
    pub failures_in_a_row: u32,
    /// The breaker.
    pub breaker: Breaker,
}

impl Health {
    /// Health keeping, disabling after `disable_after` of failures.
    pub(super) fn new(disable_after: Duration) -> Self {
        Health {
            routes: Mutex::new(HashMap::new()),
            disable_after,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RouteHealth>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a delivery to `route` may be attempted now. `version` is the
    /// endpoint's `updated_at`: a change (it was enabled again, its URL changed)
    /// forgets its failures.
    pub(super) fn gate(&self, route: &str, version: &str) -> Gate {
        let mut routes = self.lock();
        let Some(h) = routes.get_mut(route) else {
            return Gate::Go;
        };
        if h.version.as_deref() != Some(version) {
            let first = h.version.is_none();
            h.version = Some(version.to_string());
            if !first {
                h.in_a_row = 0;
                h.failing_since = None;
                h.open = None;
                h.probing = false;
            }
        }
        let Some((at, wait)) = h.open else {
            return Gate::Go;
        };
        let now = Instant::now();
        if now < at {
            return Gate::Wait(at);
        }
        if h.probing {
            // The probe is under way: the others wait for its outcome.
            return Gate::Wait(now + wait.min(BREAKER_FIRST_WAIT));
        }
        h.probing = true;
        Gate::Probe
    }

    /// Records an attempt at `route` at Unix time `now`: delivered (`ok`), or a
    /// failure of the endpoint (`Some(reason)`), or neither (a final 4xx: counted in
    /// the figures, not by the breaker).
    pub(super) fn record(
        &self,
        route: &str,
        ok: bool,
        endpoint_failed: Option<&str>,
        ms: f64,
        now: f64,
        breaker: bool,
    ) -> Change {
        let mut routes = self.lock();
        let h = routes.entry(route.to_string()).or_default();
        h.samples.push_back((now, ok, ms));
        while h.samples.len() > MAX_SAMPLES
            || h.samples.front().is_some_and(|s| now - s.0 > WINDOW_SECS)
        {
            h.samples.pop_front();
        }
        h.probing = false;
        if ok {
            h.in_a_row = 0;
            h.failing_since = None;
            h.last_success = Some(now);
            return if h.open.take().is_some() {
                Change::Closed
            } else {
                Change::None
            };
        }
        let Some(reason) = endpoint_failed else {
            return Change::None;
        };
        h.in_a_row += 1;
        h.last_error = Some((reason.to_string(), now));
        if !breaker {
            return Change::None;
        }
        let since = *h.failing_since.get_or_insert(now);
        if now - since >= self.disable_after.as_secs_f64() {
            return Change::DisableDue;
        }
        if h.in_a_row >= BREAKER_THRESHOLD {
            let wait = match h.open {
                Some((_, w)) => (w * 2).min(BREAKER_MAX_WAIT),
                None => BREAKER_FIRST_WAIT,
            };
            h.open = Some((Instant::now() + wait, wait));
            return Change::Opened;
        }
        Change::None
    }

    /// The figures of `route`, at Unix time `now`.
    pub(super) fn view(&self, route: &str, now: f64) -> HealthView {
        let routes = self.lock();
        let h = routes.get(route);
        let recent: Vec<&(f64, bool, f64)> = h
            .map(|h| {
                h.samples
                    .iter()
                    .filter(|s| now - s.0 <= WINDOW_SECS)
                    .collect()
            })
            .unwrap_or_default();
        let mut ms: Vec<f64> = recent.iter().map(|s| s.2).collect();
        ms.sort_by(f64::total_cmp);
        let pct = |q: f64| {
            ms.get(((ms.len() as f64 - 1.0) * q).round() as usize)
                .map(|v| (v * 1000.0).round() / 1000.0)
        };
        let ok = recent.iter().filter(|s| s.1).count();
        HealthView {
            attempts_1h: recent.len(),
            success_rate_1h: (!recent.is_empty()).then(|| ok as f64 / recent.len() as f64),
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            last_error: h.and_then(|h| h.last_error.as_ref().map(|e| e.0.clone())),
            last_error_at: h.and_then(|h| h.last_error.as_ref().map(|e| rfc3339(e.1))),
            last_success_at: h.and_then(|h| h.last_success.map(rfc3339)),
            failing_since: h.and_then(|h| h.failing_since.map(rfc3339)),
            failures_in_a_row: h.map_or(0, |h| h.in_a_row),
            breaker: match h {
                Some(h) if h.probing => Breaker::HalfOpen,
                Some(h) if h.open.is_some() => Breaker::Open,
                _ => Breaker::Closed,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_probes_once_and_closes_on_success() {
        let h = Health::new(Duration::from_secs(3600));
        for i in 0..BREAKER_THRESHOLD - 1 {
            assert_eq!(
                h.record("e", false, Some("HTTP 503"), 1.0, f64::from(i), true),
                Change::None
            );
        }
        assert!(matches!(h.gate("e", "v1"), Gate::Go));
        assert_eq!(
            h.record("e", false, Some("HTTP 503"), 1.0, 5.0, true),
            Change::Opened
        );
        assert!(matches!(h.gate("e", "v1"), Gate::Wait(_)), "open: wait");
        assert_eq!(h.view("e", 5.0).breaker, Breaker::Open);
        tokio::time::advance(BREAKER_FIRST_WAIT).await;
        assert!(matches!(h.gate("e", "v1"), Gate::Probe), "one probe");
        assert!(
            matches!(h.gate("e", "v1"), Gate::Wait(_)),
            "the others wait for it"
        );
        assert_eq!(h.view("e", 5.0).breaker, Breaker::HalfOpen);
        // A failed probe opens it for twice as long.
        assert_eq!(
            h.record("e", false, Some("timeout"), 1.0, 7.0, true),
            Change::Opened
        );
        tokio::time::advance(BREAKER_FIRST_WAIT).await;
        assert!(
            matches!(h.gate("e", "v1"), Gate::Wait(_)),
            "waits longer now"
        );
        tokio::time::advance(BREAKER_FIRST_WAIT).await;
        assert!(matches!(h.gate("e", "v1"), Gate::Probe));
        assert_eq!(h.record("e", true, None, 3.0, 11.0, true), Change::Closed);
        assert!(matches!(h.gate("e", "v1"), Gate::Go));
        let v = h.view("e", 11.0);
        assert_eq!(
            (v.breaker, v.failures_in_a_row, v.attempts_1h),
            (Breaker::Closed, 0, 7)
        );
        assert_eq!(v.success_rate_1h, Some(1.0 / 7.0));
        assert_eq!(v.last_error.as_deref(), Some("timeout"));
    }

    #[test]
    fn failing_past_the_limit_is_due_for_disabling() {
        let h = Health::new(Duration::from_secs(10));
        assert_eq!(
            h.record("e", false, Some("x"), 1.0, 100.0, true),
            Change::None
        );
        assert_eq!(
            h.record("e", false, Some("x"), 1.0, 105.0, true),
            Change::None
        );
        assert_eq!(
            h.record("e", false, Some("x"), 1.0, 110.0, true),
            Change::DisableDue
        );
        // A final 4xx is not the endpoint failing.
        let g = Health::new(Duration::from_secs(1));
        assert_eq!(g.record("f", false, None, 1.0, 0.0, true), Change::None);
        assert_eq!(g.record("f", false, None, 1.0, 9.0, true), Change::None);
    }
}
