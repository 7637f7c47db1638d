//! Webhook signatures: the specification's `X-Webhook-Signature` and Standard Webhooks.
//!
//! - **Hex style**: `X-Webhook-Signature: sha256=<hex HMAC-SHA256(secret, body)>` over the
//!   exact body bytes; the key is the secret's UTF-8 bytes as configured.
//! - **Standard Webhooks** (<https://www.standardwebhooks.com/>): `webhook-id`,
//!   `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256(key,
//!   "{id}.{timestamp}.{body}")>`, where the key is the base64-decoded rest of a `whsec_`
//!   secret, else the secret's UTF-8 bytes. A `webhook-signature` header may carry several
//!   space-separated signatures (secret rotation); one valid signature is enough.
//!
//! Verification takes every configured secret (rotation), compares MACs in constant time
//! (`Mac::verify_slice`), and refuses a Standard Webhooks timestamp further than the
//! tolerance (default 5 minutes) from now. Errors never contain a secret or a MAC.
//!
//! ```
//! use pm_events::webhook::sign::{Signer, verify_hex_signature, verify_standard, DEFAULT_TOLERANCE};
//! use pm_events::config::Secret;
//!
//! let secrets = vec![Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")];
//! let signer = Signer::new(&secrets[0]).unwrap();
//! let body = br#"{"event_type":"file_change"}"#;
//! let hex = signer.hex_signature(body);
//! assert!(verify_hex_signature(&secrets, body, &hex).is_ok());
//! let sig = signer.standard_signature("msg_1", 1_700_000_000, body);
//! assert!(verify_standard(&secrets, "msg_1", "1700000000", body, &sig, 1_700_000_010, DEFAULT_TOLERANCE).is_ok());
//! assert!(verify_standard(&secrets, "msg_1", "1700000000", b"tampered", &sig, 1_700_000_010, DEFAULT_TOLERANCE).is_err());
//! ```

use crate::secret::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Default Standard Webhooks timestamp tolerance.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Prefix of the hex signature value.
pub const HEX_SIGNATURE_PREFIX: &str = "sha256=";

/// Why a signature was refused. The messages name the problem, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No signature was given, or no secret is configured to check it with.
    #[error("missing {0}")]
    Missing(&'static str),
    /// The signature header is not of the expected form.
    #[error("malformed {0}")]
    Malformed(String),
    /// The Standard Webhooks timestamp is outside the tolerance.
    #[error("timestamp {timestamp} is {skew_secs} s away from now (tolerance {tolerance_secs} s)")]
    Expired {
        /// The timestamp received.
        timestamp: i64,
        /// How far it is from now, in seconds.
        skew_secs: i64,
        /// The tolerance, in seconds.
        tolerance_secs: u64,
    },
    /// No configured secret produces the signature.
    #[error("signature does not match the body (checked against {0} secret(s))")]
    Mismatch(usize),
}

/// The HMAC key of a secret: a `whsec_` secret's base64-decoded rest, else its UTF-8 bytes.
pub fn standard_key(secret: &Secret) -> Result<Vec<u8>, VerifyError> {
    secret
        .standard_key()
        .map_err(|_| VerifyError::Malformed("whsec_ secret (not base64)".into()))
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    }
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // An empty key is valid for HMAC; this is only reached if the hmac crate changed its mind.
    <HmacSha256 as KeyInit>::new(&Default::default())
}

/// Signs outgoing webhooks with one secret (the first configured one).
///
/// The keyed HMAC states are computed once and cloned per signature.
#[derive(Clone)]
pub struct Signer {
    hex: HmacSha256,
    standard: HmacSha256,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    /// A signer for `secret`; fails only for a `whsec_` secret that is not base64.
    pub fn new(secret: &Secret) -> Result<Self, VerifyError> {
        Ok(Signer {
            hex: mac(secret.expose().as_bytes()),
            standard: mac(&standard_key(secret)?),
        })
    }

    /// `sha256=<hex>` over `body` (the specification's `X-Webhook-Signature`).
    pub fn hex_signature(&self, body: &[u8]) -> String {
        let mut m = self.hex.clone();
        m.update(body);
        format!(
            "{HEX_SIGNATURE_PREFIX}{}",
            hex::encode(m.finalize().into_bytes())
        )
    }

    /// `v1,<base64>` over `"{id}.{timestamp}.{body}"` (Standard Webhooks).
    pub fn standard_signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut m = self.standard.clone();
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        format!("v1,{}", B64.encode(m.finalize().into_bytes()))
    }

    /// Every signature header of an outgoing request, in sending order.
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 4] {
        [
            ("X-Webhook-Signature", self.hex_signature(body)),
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                self.standard_signature(id, timestamp, body),
            ),
        ]
    }
}

/// What the Standard Webhooks headers say on their own, before any body byte is
/// read: an id, a timestamp within `tolerance` of `now`, and at least one
/// `v1,<base64>` signature (decoded). A request that fails here is refused
/// without reading its body.
pub fn standard_headers(
    secrets: &[Secret],
    id: &str,
    timestamp: &str,
    signatures: &str,
    now: i64,
    tolerance: Duration,
) -> Result<(i64, Vec<Vec<u8>>), VerifyError> {
    if id.trim().is_empty() {
        return Err(VerifyError::Missing("webhook-id"));
    }
    if signatures.trim().is_empty() {
        return Err(VerifyError::Missing("webhook-signature"));
    }
    if secrets.is_empty() {
        return Err(VerifyError::Missing(
            "secret (WEBHOOK_SIGNATURE_SECRET is not set)",
        ));
    }
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed("webhook-timestamp (expected Unix seconds)".into()))?;
    let skew = now.abs_diff(ts);
    if skew > tolerance.as_secs() {
        return Err(VerifyError::Expired {
            timestamp: ts,
            skew_secs: i64::try_from(skew).unwrap_or(i64::MAX),
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let mut candidates = Vec::new();
    for entry in signatures.split_whitespace() {
        if let Some(b64) = entry.strip_prefix("v1,")
            && let Ok(raw) = B64.decode(b64)
        {
            candidates.push(raw);
        }
    }
    if candidates.is_empty() {
        return Err(VerifyError::Malformed(
            "webhook-signature (expected one or more `v1,<base64>` entries)".into(),
        ));
    }
    Ok((ts, candidates))
}

/// What an `X-Webhook-Signature` header says on its own, before the body is
/// read: `sha256=<hex>`, decoded.
pub fn hex_signature_header(secrets: &[Secret], signature: &str) -> Result<Vec<u8>, VerifyError> {
    let signature = signature.trim();
    if signature.is_empty() {
        return Err(VerifyError::Missing("X-Webhook-Signature"));
    }
    if secrets.is_empty() {
        return Err(VerifyError::Missing(
            "secret (WEBHOOK_SIGNATURE_SECRET is not set)",
        ));
    }
    let hexpart = signature
        .strip_prefix(HEX_SIGNATURE_PREFIX)
        .ok_or_else(|| {
            VerifyError::Malformed("X-Webhook-Signature (expected sha256=<hex>)".into())
        })?;
    hex::decode(hexpart).map_err(|_| VerifyError::Malformed("X-Webhook-Signature (not hex)".into()))
}

/// Verifies a hex `sha256=<hex>` signature of `body` against every secret.
pub fn verify_hex_signature(
    secrets: &[Secret],
    body: &[u8],
    signature: &str,
) -> Result<(), VerifyError> {
    let expected = hex_signature_header(secrets, signature)?;
    for s in secrets {
        let mut m = mac(s.expose().as_bytes());
        m.update(body);
        if m.verify_slice(&expected).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch(secrets.len()))
}

/// Verifies Standard Webhooks headers: `timestamp` within `tolerance` of `now`
/// (Unix seconds), then any `v1,` entry of the space-separated `signatures`
/// against any secret.
pub fn verify_standard(
    secrets: &[Secret],
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
    now: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let (ts, candidates) = standard_headers(secrets, id, timestamp, signatures, now, tolerance)?;
    let mut keys = Vec::with_capacity(secrets.len());
    for s in secrets {
        keys.push(standard_key(s)?);
    }
    for key in &keys {
        let mut m = mac(key);
        m.update(id.as_bytes());
        m.update(b".");
        m.update(ts.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        for c in &candidates {
            if m.clone().verify_slice(c).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::Mismatch(secrets.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Secret {
        Secret::new(x)
    }

    #[test]
    fn hex_signature_is_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let signer = Signer::new(&s("Jefe")).unwrap();
        assert_eq!(
            signer.hex_signature(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn standard_signature_matches_the_specification_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let secret = s("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signer = Signer::new(&secret).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signer.standard_signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_tolerance_and_errors() {
        let old = s("old-secret");
        let new = s("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signer = Signer::new(&old).unwrap();
        let body = b"{}";
        let sig = signer.standard_signature("id1", 1000, body);
        let both = [new.clone(), old.clone()];
        // A list of signatures, the valid one second.
        let list = format!("v1,AAAA {sig}");
        assert!(
            verify_standard(&both, "id1", "1000", body, &list, 1000, DEFAULT_TOLERANCE).is_ok()
        );
        assert_eq!(
            verify_standard(
                std::slice::from_ref(&new),
                "id1",
                "1000",
                body,
                &sig,
                1000,
                DEFAULT_TOLERANCE
            ),
            Err(VerifyError::Mismatch(1))
        );
        let e = verify_standard(
            &both,
            "id1",
            "1000",
            body,
            &sig,
            1000 + 301,
            DEFAULT_TOLERANCE,
        )
        .unwrap_err();
        assert!(
            matches!(e, VerifyError::Expired { skew_secs: 301, .. }),
            "{e}"
        );
        assert!(
            verify_standard(
                &both,
                "id1",
                "1000",
                body,
                &sig,
                1000 - 299,
                DEFAULT_TOLERANCE
            )
            .is_ok()
        );
        assert!(matches!(
            verify_standard(&both, "id1", "x", body, &sig, 1000, DEFAULT_TOLERANCE),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            verify_hex_signature(&both, body, "md5=00"),
            Err(VerifyError::Malformed(_))
        ));
        assert!(verify_hex_signature(&both, body, &signer.hex_signature(body)).is_ok());
        assert_eq!(
            verify_hex_signature(&[], body, "sha256=00")
                .unwrap_err()
                .to_string(),
            "missing secret (WEBHOOK_SIGNATURE_SECRET is not set)"
        );
        for e in [
            verify_hex_signature(&both, b"other", &signer.hex_signature(body)).unwrap_err(),
            verify_standard(
                &both,
                "id1",
                "1000",
                b"other",
                &sig,
                1000,
                DEFAULT_TOLERANCE,
            )
            .unwrap_err(),
        ] {
            assert!(!e.to_string().contains("old-secret"));
        }
    }
}
