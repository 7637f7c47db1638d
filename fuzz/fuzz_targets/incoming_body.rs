//! The incoming webhook body, in each form the server reads: the specification's
//! JSON payload, CloudEvents structured mode, and CloudEvents binary mode (with
//! and without a content type). Parsing must answer, never panic; what it accepts
//! must be an event the bus can take or refuse with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pm_events::door::webhook_forms::parse;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let mut headers = BTreeMap::new();
    match mode % 4 {
        0 => {
            headers.insert("content-type".to_string(), "application/json".to_string());
        }
        1 => {
            headers.insert(
                "content-type".to_string(),
                "application/cloudevents+json".to_string(),
            );
        }
        m => {
            if m == 2 {
                headers.insert("content-type".to_string(), "application/json".to_string());
            }
            headers.insert("ce-specversion".to_string(), "1.0".to_string());
            headers.insert("ce-id".to_string(), "id-1".to_string());
            headers.insert("ce-source".to_string(), "/fuzz".to_string());
            headers.insert("ce-type".to_string(), "risk_alert".to_string());
            headers.insert("ce-time".to_string(), "2025-01-15T10:30:00Z".to_string());
        }
    }
    if let Ok(event) = parse(body, &headers) {
        let _ = event.validate();
        let _ = pm_events::handlers::validate_builtin(&event.event_type, &event.data);
    }
});
