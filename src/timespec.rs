//! Durations and points in time as users write them — on the command line, in a
//! query string, in a JSON body — parsed without panicking.
//!
//! A duration is a number of seconds (`1.5`) or a humantime duration (`30s`,
//! `2m`, `500ms`, `7d`); a point in time is a duration ago, a date (`2025-01-15`,
//! UTC midnight) or an RFC 3339 time. Anything that cannot be represented — a
//! duration longer than [`MAX_DURATION`], a time before 1970 or after 9999 — is
//! refused with a message that says why; the caller names the field or flag.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use std::time::Duration;

/// The longest duration accepted: 100 years. Longer ones are refused rather
/// than overflowing a timer or a clock computation.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// The latest point in time accepted, 9999-12-31T23:59:59Z, in Unix seconds.
const MAX_UNIX: f64 = 253_402_300_799.0;

/// Why a duration or a time was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimeError(String);

/// A duration: seconds (`1.5`) or a humantime duration (`30s`, `2m`, `500ms`).
pub fn parse_duration(s: &str) -> Result<Duration, TimeError> {
    let t = s.trim();
    duration(t).map_err(|r| match r {
        Refusal::TooLong => too_long(t),
        Refusal::Invalid(why) => TimeError(format!("invalid duration {t:?}: {why}")),
    })
}

/// Why [`duration`] refused its text.
enum Refusal {
    /// Longer than [`MAX_DURATION`] (or than a `Duration` holds).
    TooLong,
    /// Not a duration; why.
    Invalid(String),
}

fn duration(t: &str) -> Result<Duration, Refusal> {
    let d = match t.parse::<f64>() {
        Ok(secs) if !secs.is_finite() || secs < 0.0 => {
            return Err(Refusal::Invalid(
                "expected a non-negative number of seconds or a duration such as 30s, 2m, 500ms"
                    .into(),
            ));
        }
        Ok(secs) => Duration::try_from_secs_f64(secs).map_err(|_| Refusal::TooLong)?,
        Err(_) => humantime::parse_duration(t)
            .map_err(|e| Refusal::Invalid(format!("{e} (examples: 30s, 2m, 500ms)")))?,
    };
    if d > MAX_DURATION {
        return Err(Refusal::TooLong);
    }
    Ok(d)
}

fn too_long(t: &str) -> TimeError {
    TimeError(format!(
        "invalid duration {t:?}: longer than the longest accepted, 100 years"
    ))
}

/// A point in time, in Unix seconds: a duration before `now` (`90m`, `2h`,
/// `7d`), a date (`2025-01-15`, UTC midnight), or an RFC 3339 time.
///
/// A duration reaching before 1970 means 1970 (the whole log).
pub fn parse_when(s: &str, now: f64) -> Result<f64, TimeError> {
    let t = s.trim();
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|n| Utc.from_utc_datetime(&n).timestamp() as f64)
            .filter(|t| (0.0..=MAX_UNIX).contains(t))
            .ok_or_else(|| TimeError(format!("invalid date {t:?}: before 1970")));
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        let secs = d.timestamp() as f64 + f64::from(d.timestamp_subsec_micros()) / 1e6;
        if !(0.0..=MAX_UNIX).contains(&secs) {
            return Err(TimeError(format!(
                "invalid time {t:?}: before 1970 or after 9999"
            )));
        }
        return Ok(secs);
    }
    match duration(t) {
        Ok(d) => Ok((now - d.as_secs_f64()).max(0.0)),
        Err(Refusal::TooLong) => Err(too_long(t)),
        Err(Refusal::Invalid(_)) => Err(TimeError(format!(
            "invalid time {t:?}: give a duration ago (30m, 2h, 7d), a date (2025-01-15) or an RFC 3339 time"
        ))),
    }
}

/// Unix seconds as RFC 3339 (UTC, milliseconds), as the logs and the API write times.
pub fn rfc3339(t: f64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros((t * 1e6) as i64)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_range_parse() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 30s "), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_that_cannot_be_represented_are_refused() {
        for s in [
            "1e308",
            "1e20",
            "18446744073709551616",
            "inf",
            "NaN",
            "-1",
            "4000000000",
            "200y",
            "99999999999999999999999s",
        ] {
            assert!(parse_duration(s).is_err(), "{s} was accepted");
        }
    }

    #[test]
    fn times_parse_and_refuse_what_they_cannot_hold() {
        let now = 1_800_000_000.0;
        assert_eq!(parse_when("1h", now), Ok(now - 3600.0));
        assert_eq!(parse_when("2025-01-15", now), Ok(1_736_899_200.0));
        assert_eq!(
            parse_when("2025-01-15T00:00:00.5Z", now),
            Ok(1_736_899_200.5)
        );
        assert_eq!(parse_when("90y", now), Ok(0.0));
        for s in [
            "1e308",
            "1e20",
            "18446744073709551616",
            "1960-01-01",
            "garbage",
        ] {
            let e = parse_when(s, now);
            assert!(e.is_err(), "{s} was accepted: {e:?}");
        }
        assert!(
            parse_when("1e308", now)
                .unwrap_err()
                .to_string()
                .contains("100 years")
        );
    }
}
