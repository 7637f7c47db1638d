//! One line of `pm-events publish -` (JSON Lines from stdin), as raw bytes:
//! not UTF-8, not JSON, repeated keys, wrong types. Parsing must answer, never
//! panic; what the door reads has a valid type and object data (the bus checks
//! the id and source when it admits the event, and answers a message).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = pm_events::door::line(data) {
        assert!(pm_events::event::validate_type(&event.event_type).is_ok());
        assert!(event.data.is_object());
        let _ = event.validate();
    }
});
