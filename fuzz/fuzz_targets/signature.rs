//! Signature headers and verification: the specification's `X-Webhook-Signature`
//! and Standard Webhooks' `webhook-id` / `webhook-timestamp` / `webhook-signature`,
//! from arbitrary bytes. Verification must answer (valid or an error), never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pm_events::config::Secret;
use pm_events::webhook::sign::{DEFAULT_TOLERANCE, Signer, verify_hex_signature, verify_standard};

fuzz_target!(|data: &[u8]| {
    // Split the input into header values and a body at the first three NUL bytes.
    let mut parts = data.splitn(4, |b| *b == 0);
    let sig = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let ts = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let body = parts.next().unwrap_or_default();
    let secrets = [
        Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        Secret::new("It's a Secret to Everybody"),
    ];
    let _ = verify_hex_signature(&secrets, body, &sig);
    let _ = verify_standard(&secrets, &id, &ts, body, &sig, 1_700_000_000, DEFAULT_TOLERANCE);
    // What we sign must verify (a blank webhook-id is refused as missing).
    let signer = Signer::new(&secrets[0]).unwrap();
    if !id.trim().is_empty() {
        let good = signer.standard_signature(&id, 1_700_000_000, body);
        assert!(
            verify_standard(&secrets, &id, "1700000000", body, &good, 1_700_000_000, DEFAULT_TOLERANCE)
                .is_ok()
        );
    }
    assert!(verify_hex_signature(&secrets, body, &signer.hex_signature(body)).is_ok());
});
