//! The query strings of the HTTP API and the time and duration parsers behind
//! `?since=`, `?until=`, `{"since"}` and every duration flag: the input is split
//! at its first NUL into a query string and a free-standing value. Parsing must
//! answer, never panic; what it accepts must be representable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pm_events::{query, timespec};

const NOW: f64 = 1_800_000_000.0;

fn check_value(v: &str) {
    if let Ok(d) = timespec::parse_duration(v) {
        assert!(d <= timespec::MAX_DURATION);
    }
    if let Ok(t) = timespec::parse_when(v, NOW) {
        assert!(t.is_finite() && t >= 0.0, "{v:?} gave {t}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (raw, value) = text.split_once('\0').unwrap_or((&text, ""));
    check_value(value);
    let allowed = ["type", "since", "until", "limit", "cursor"];
    if let Ok(q) = query::params(Some(raw), &allowed) {
        assert!(q.keys().all(|k| allowed.contains(&k.as_str())));
        if let Ok(n) = query::limit(q.get("limit").map(String::as_str)) {
            assert!((1..=query::MAX_LIMIT).contains(&n));
        }
        for k in ["since", "until"] {
            if let Some(v) = q.get(k) {
                check_value(v);
            }
        }
    }
});
