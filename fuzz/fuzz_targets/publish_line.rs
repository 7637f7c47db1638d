//! One line of `pm-events publish -` (JSON Lines from stdin), as raw bytes:
//! not UTF-8, not JSON, repeated keys, wrong types. Parsing must answer, never
//! panic, and what it accepts must be a valid event.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = pm_events::input::parse_line(data) {
        assert!(event.validate().is_ok());
    }
});
