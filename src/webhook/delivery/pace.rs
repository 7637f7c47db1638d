//! Pacing per endpoint: an endpoint's `rate_limit_per_s`, and the pause a 429 asks
//! of the whole endpoint (not only of the delivery that got it).
//!
//! Each paced route has the time its next request may start. A request under a rate
//! limit takes that time and moves it on by `1 / rate` (requests are spaced evenly,
//! with no burst); a 429 moves it to the end of the pause. Workers wait for their
//! turn before they send, so a paced endpoint holds only its own workers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The turns of the paced routes.
#[derive(Default)]
pub(super) struct Pacer {
    /// Route → when its next request may start. Only routes with a limit or a
    /// pause have an entry; written under the lock by `turn` and `pause`.
    next: Mutex<HashMap<String, Instant>>,
}

impl Pacer {
    /// When a request to `route` may start, taking that turn; `rate` is the route's
    /// limit in requests per second (`None`: none).
    pub(super) fn take_turn(&self, route: &str, rate: Option<u32>) -> Option<Instant> {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let at = match next.get(route) {
            Some(t) if *t > now => *t,
            Some(_) if rate.is_none() => {
                // A pause that is over.
                next.remove(route);
                return None;
            }
            _ => now,
        };
        match rate {
            Some(r) => {
                let gap = Duration::from_secs_f64(1.0 / f64::from(r.max(1)));
                next.insert(route.to_string(), at + gap);
            }
            None if at <= now => return None,
            None => {}
        }
        (at > now).then_some(at)
    }

    /// Holds every request to `route` until `until`.
    pub(super) fn pause(&self, route: &str, until: Instant) {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = next.entry(route.to_string()).or_insert(until);
        if *t < until {
            *t = until;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_spaces_requests_and_a_pause_holds_the_route() {
        let p = Pacer::default();
        assert_eq!(p.take_turn("a", None), None, "no limit, no pause: at once");
        let t0 = Instant::now();
        let turns: Vec<Instant> = (0..5)
            .map(|_| p.take_turn("a", Some(5)).unwrap_or(t0))
            .collect();
        let gaps: Vec<u128> = turns.iter().map(|t| (*t - t0).as_millis()).collect();
        assert_eq!(gaps, vec![0, 200, 400, 600, 800]);
        p.pause("b", t0 + Duration::from_secs(2));
        assert_eq!(p.take_turn("b", None), Some(t0 + Duration::from_secs(2)));
        assert_eq!(p.take_turn("c", None), None, "other routes go on");
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(p.take_turn("b", None), None, "the pause is over");
    }
}
