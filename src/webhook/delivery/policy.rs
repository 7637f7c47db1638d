//! When to try again: the backoff and `Retry-After`.

use super::config::MAX_RETRY_AFTER;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// What became of one attempt, as the attempt log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: done.
    Delivered,
    /// 408, 429, 5xx or a network error, with retries left: tried again later.
    Retry,
    /// Another 4xx (or a 3xx: redirects are not followed): final.
    Failed,
    /// 410 Gone: final; the endpoint no longer exists.
    Gone,
    /// Retryable, but the retries are spent.
    Dead,
}

impl Outcome {
    /// The outcome of an answer with `status` (`None`: no answer) at attempt
    /// number `attempt` (1 = the first) when `max_retries` retries are allowed.
    pub fn of(status: Option<u16>, attempt: u32, max_retries: u32) -> Outcome {
        let o = match status {
            Some(s) if (200..300).contains(&s) => Outcome::Delivered,
            Some(410) => Outcome::Gone,
            Some(s) if s == 408 || s == 429 || s >= 500 => Outcome::Retry,
            Some(_) => Outcome::Failed,
            None => Outcome::Retry,
        };
        if o == Outcome::Retry && attempt > max_retries {
            Outcome::Dead
        } else {
            o
        }
    }

    /// Its name in the logs: `delivered`, `retry`, `failed`, `gone`, `dead`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry => "retry",
            Outcome::Failed => "failed",
            Outcome::Gone => "gone",
            Outcome::Dead => "dead",
        }
    }

    /// Whether the delivery is over after it (delivered or failed for good).
    pub fn is_final(self) -> bool {
        self != Outcome::Retry
    }
}

/// The wait before retry number `retry` (1-based): `base × 2^(retry−1)`, capped,
/// times `1 + 0.2 × jitter` with `jitter` in `[-1, 1]`, never above the cap.
pub fn backoff(retry: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exp = 2f64.powi(retry.saturating_sub(1).min(62) as i32);
    let raw = (base.as_secs_f64() * exp).min(cap.as_secs_f64());
    Duration::from_secs_f64((raw * (1.0 + 0.2 * jitter.clamp(-1.0, 1.0))).min(cap.as_secs_f64()))
}

/// Parses `Retry-After`: delay-seconds or an HTTP date; capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let v = value.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let when = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        (when - now).to_std().unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_statuses() {
        assert_eq!(Outcome::of(Some(204), 1, 0), Outcome::Delivered);
        assert_eq!(Outcome::of(Some(503), 1, 1), Outcome::Retry);
        assert_eq!(Outcome::of(Some(503), 2, 1), Outcome::Dead);
        assert_eq!(Outcome::of(None, 1, 3), Outcome::Retry);
        assert_eq!(Outcome::of(Some(429), 1, 3), Outcome::Retry);
        assert_eq!(Outcome::of(Some(302), 1, 3), Outcome::Failed);
        assert_eq!(Outcome::of(Some(404), 1, 3), Outcome::Failed);
        assert_eq!(Outcome::of(Some(410), 1, 3), Outcome::Gone);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_a_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        assert_eq!(backoff(1, base, cap, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(2, base, cap, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(5, base, cap, 0.0), Duration::from_secs(16));
        assert_eq!(backoff(3, base, cap, 1.0), Duration::from_secs_f64(4.8));
        assert_eq!(backoff(3, base, cap, -1.0), Duration::from_secs_f64(3.2));
        assert_eq!(backoff(20, base, cap, 0.0), cap);
        assert_eq!(
            backoff(20, base, cap, 1.0),
            cap,
            "jitter never passes the cap"
        );
        assert!(backoff(20, base, cap, -1.0) >= Duration::from_secs(240));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = DateTime::parse_from_rfc3339("2025-01-15T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 15 Jan 2025 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 15 Jan 2025 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
