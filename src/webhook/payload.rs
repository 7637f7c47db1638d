//! The body of an outgoing webhook (docs/webhooks.md).
//!
//! ```text
//! {"event_type":"file_change","timestamp":1642248000,"event_id":"<uuid>","data":{...},"source":"personal-manager","signature":"sha256=<hex>"}
//! ```
//!
//! - `event_type`, `event_id`, `data`, `source`: the event's.
//! - `timestamp`: the event's timestamp in whole Unix seconds.
//! - `signature` (kept from the specification): `sha256=<hex HMAC-SHA256(secret, U)>` where `U` is
//!   the body with its last member removed: the bytes before `,"signature":` followed by
//!   `}`. A receiver can strip that suffix and check it ([`verify_body_signature`]).
//!   It is absent when unsigned delivery is allowed and no secret is set.
//!
//! The headers (`X-Webhook-Signature`, `webhook-signature`) cover the whole body as sent,
//! `signature` member included.

use super::sign::{Signer, VerifyError, verify_hex_signature};
use crate::config::Secret;
use crate::event::Event;
use serde::Serialize;

#[derive(Serialize)]
struct Unsigned<'a> {
    event_type: &'a str,
    timestamp: i64,
    event_id: &'a str,
    data: &'a serde_json::Value,
    source: &'a str,
}

const SIGNATURE_MEMBER: &[u8] = b",\"signature\":\"";

/// The exact bytes sent for `event`.
pub fn build_body(event: &Event, signer: Option<&Signer>) -> Vec<u8> {
    let unsigned = Unsigned {
        event_type: &event.event_type,
        timestamp: event.timestamp.floor() as i64,
        event_id: &event.event_id,
        data: &event.data,
        source: &event.source,
    };
    // Serializing strings, an integer and a Value into a Vec cannot fail.
    let mut body = serde_json::to_vec(&unsigned).unwrap_or_default();
    if let Some(signer) = signer {
        let sig = signer.hex_signature(&body);
        body.pop(); // the closing '}'
        body.extend_from_slice(SIGNATURE_MEMBER);
        body.extend_from_slice(sig.as_bytes());
        body.extend_from_slice(b"\"}");
    }
    body
}

/// Splits a signed body into `U` (what the `signature` member covers) and that signature.
pub fn split_body_signature(body: &[u8]) -> Option<(Vec<u8>, String)> {
    let start = body
        .windows(SIGNATURE_MEMBER.len())
        .rposition(|w| w == SIGNATURE_MEMBER)?;
    let rest = &body[start + SIGNATURE_MEMBER.len()..];
    let sig = rest.strip_suffix(b"\"}")?;
    let sig = std::str::from_utf8(sig).ok()?;
    let mut unsigned = body[..start].to_vec();
    unsigned.push(b'}');
    Some((unsigned, sig.to_string()))
}

/// Checks the body's own `signature` member.
pub fn verify_body_signature(secrets: &[Secret], body: &[u8]) -> Result<(), VerifyError> {
    let (unsigned, sig) =
        split_body_signature(body).ok_or(VerifyError::Missing("body signature member"))?;
    verify_hex_signature(secrets, &unsigned, &sig)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn body_has_the_specified_fields_and_a_checkable_signature() {
        let secret = Secret::new("k");
        let signer = Signer::new(&secret).unwrap();
        let e = Event::new(
            "file_change",
            json!({"file_path": "/a", "note": "\"signature\":\"x\"}"}),
        );
        let body = build_body(&e, Some(&signer));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["event_type"], "file_change");
        assert_eq!(v["event_id"], e.event_id.as_str());
        assert_eq!(v["source"], "personal-manager");
        assert_eq!(v["timestamp"], e.timestamp.floor() as i64);
        assert_eq!(v["data"], e.data);
        assert!(v["signature"].as_str().unwrap().starts_with("sha256="));
        assert!(verify_body_signature(std::slice::from_ref(&secret), &body).is_ok());
        let (unsigned, _) = split_body_signature(&body).unwrap();
        assert_eq!(unsigned, build_body(&e, None));
        let mut tampered = body.clone();
        tampered[20] ^= 1;
        assert!(verify_body_signature(&[secret], &tampered).is_err());
    }
}
