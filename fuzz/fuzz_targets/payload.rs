//! The built-in payload validators (`file_change`, `report_ready`, `risk_alert`)
//! on any JSON the strict parser accepts. They must answer, never panic, and a
//! refusal must name a field (`data...`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pm_events::handlers::validate_builtin;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = pm_events::strict_json::from_slice(data) else {
        return;
    };
    for ty in ["file_change", "report_ready", "risk_alert"] {
        if let Err(e) = validate_builtin(ty, &value) {
            assert!(e.to_string().contains("data"), "{e}");
        }
    }
});
