//! A webhook receiver that checks what pm-events sends with the library's own
//! verification: the Standard Webhooks headers and the `X-Webhook-Signature`
//! header. It signs a body the way a delivery does, then verifies it, and shows
//! a tampered body refused.
//!
//! ```bash
//! cargo run --example signed_receiver
//! ```
//!
//! In a real receiver, `headers` and `body` come from the HTTP request: verify
//! the exact bytes received, before parsing them.

use pm_events::config::Secret;
use pm_events::webhook::sign::{Signer, verify_hex_signature, verify_standard};
use std::time::Duration;

/// What a receiver checks: both signature headers, against its secret(s).
fn verify(
    secrets: &[Secret],
    headers: &[(String, String)],
    body: &[u8],
) -> Result<(), Box<dyn std::error::Error>> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    verify_standard(
        secrets,
        header("webhook-id"),
        header("webhook-timestamp"),
        body,
        header("webhook-signature"),
        now,
        Duration::from_secs(300),
    )?;
    verify_hex_signature(secrets, body, header("x-webhook-signature"))?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let signer = Signer::new(&secret)?;
    let body = br#"{"event_type":"deployment","timestamp":1795830561,"event_id":"msg_001","data":{"service":"api"},"source":"personal-manager"}"#;

    // The headers a delivery carries (see `pm-events webhooks sign`).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let headers = vec![
        (
            "X-Webhook-Signature".to_string(),
            signer.hex_signature(body),
        ),
        ("webhook-id".to_string(), "msg_001".to_string()),
        ("webhook-timestamp".to_string(), now.to_string()),
        (
            "webhook-signature".to_string(),
            signer.standard_signature("msg_001", now, body),
        ),
    ];

    let secrets = [secret];
    verify(&secrets, &headers, body)?;
    println!("valid: both signatures check");

    let mut tampered = body.to_vec();
    tampered[20] ^= 1;
    match verify(&secrets, &headers, &tampered) {
        Ok(()) => return Err("a tampered body passed".into()),
        Err(e) => println!("tampered body refused: {e}"),
    }
    Ok(())
}
