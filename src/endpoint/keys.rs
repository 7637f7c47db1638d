//! An endpoint's signing keys: generation, rotation with an overlap, and the
//! signature headers of one request.
//!
//! - HMAC endpoints have `whsec_<base64 of 32 random bytes>` secrets. The request
//!   carries `X-Webhook-Signature: sha256=<hex>` keyed by the secret string's UTF-8
//!   bytes (as `WEBHOOK_SIGNATURE_SECRET`) and a Standard Webhooks `v1,` signature
//!   keyed by the decoded bytes.
//! - Ed25519 endpoints have a key pair; the request carries `v1a,<base64 signature>`
//!   over `{webhook-id}.{webhook-timestamp}.{body}`, and the receiver verifies with the
//!   public key `whpk_<base64 of its 32 bytes>`. The private key never leaves the server.
//!
//! Rotation puts a new key first and keeps the older ones until their `expires_at`;
//! while two keys are valid, `webhook-signature` carries a signature of each
//! (space-separated, as Standard Webhooks allows).

use super::model::Signing;
use crate::config::Secret;
use crate::webhook::sign::Signer;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use serde::{Deserialize, Serialize};

/// The prefix of an Ed25519 public key.
pub const WHPK_PREFIX: &str = "whpk_";
/// The prefix under which an Ed25519 private key is stored (never shown).
const WHSK_PREFIX: &str = "whsk_";

/// One key of an endpoint, as stored.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    /// `whsec_...` (HMAC) or `whsk_<base64 seed>` (Ed25519).
    pub material: String,
    /// Unix seconds after which it no longer signs (`None`: the current key).
    pub expires_at: Option<f64>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

/// The operating system's random generator failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw random bytes for a signing key: {0}")]
pub struct RandomError(String);

fn random32() -> Result<[u8; 32], RandomError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| RandomError(e.to_string()))?;
    Ok(b)
}

impl Key {
    /// A new random key for `signing`.
    pub fn generate(signing: Signing) -> Result<Key, RandomError> {
        let bytes = random32()?;
        let material = match signing {
            Signing::HmacSha256 => format!("{}{}", crate::secret::WHSEC_PREFIX, B64.encode(bytes)),
            Signing::Ed25519 => format!("{WHSK_PREFIX}{}", B64.encode(bytes)),
        };
        Ok(Key {
            material,
            expires_at: None,
        })
    }

    fn ed25519(&self) -> Option<ed25519_dalek::SigningKey> {
        let seed = B64.decode(self.material.strip_prefix(WHSK_PREFIX)?).ok()?;
        let seed: [u8; 32] = seed.try_into().ok()?;
        Some(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// What the owner of the endpoint is shown: `("secret", whsec_...)` or
    /// `("public_key", whpk_...)`.
    pub fn shown(&self) -> (&'static str, String) {
        match self.ed25519() {
            Some(k) => (
                "public_key",
                format!("{WHPK_PREFIX}{}", B64.encode(k.verifying_key().to_bytes())),
            ),
            None => ("secret", self.material.clone()),
        }
    }
}

/// A secret given at create: `whsec_` and the base64 of 24 to 64 bytes.
pub fn given_secret(v: &serde_json::Value) -> Result<Key, super::model::FieldError> {
    let bad = || super::model::FieldError {
        field: "secret".into(),
        problem: "expected whsec_ followed by the base64 of 24 to 64 bytes".into(),
    };
    let s = v.as_str().ok_or_else(bad)?;
    let n = Secret::new(s).standard_key().map_err(|_| bad())?.len();
    if !s.starts_with(crate::secret::WHSEC_PREFIX) || !(24..=64).contains(&n) {
        return Err(bad());
    }
    Ok(Key {
        material: s.to_string(),
        expires_at: None,
    })
}

/// Adds a new current key; the others stay valid for `overlap` from `now` (or less,
/// if they were to expire sooner) and expired ones go.
pub fn rotate(
    keys: &mut Vec<Key>,
    signing: Signing,
    overlap_secs: f64,
    now: f64,
) -> Result<(), RandomError> {
    let new = Key::generate(signing)?;
    for k in keys.iter_mut() {
        let until = now + overlap_secs;
        k.expires_at = Some(k.expires_at.map_or(until, |t| t.min(until)));
    }
    keys.retain(|k| k.expires_at.is_some_and(|t| t > now));
    keys.insert(0, new);
    Ok(())
}

/// The keys of one endpoint, ready to sign.
#[derive(Clone)]
pub enum Signers {
    /// HMAC: the current key's signer first, then the others still valid (with their expiry).
    Hmac(Vec<(Signer, Option<f64>)>),
    /// Ed25519: the current key first.
    Ed25519(Vec<(ed25519_dalek::SigningKey, Option<f64>)>),
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signers(***)")
    }
}

impl Signers {
    /// The signers of `keys` (unusable keys are skipped).
    pub fn new(signing: Signing, keys: &[Key]) -> Signers {
        match signing {
            Signing::HmacSha256 => Signers::Hmac(
                keys.iter()
                    .filter_map(|k| {
                        Some((
                            Signer::new(&Secret::new(k.material.clone())).ok()?,
                            k.expires_at,
                        ))
                    })
                    .collect(),
            ),
            Signing::Ed25519 => Signers::Ed25519(
                keys.iter()
                    .filter_map(|k| Some((k.ed25519()?, k.expires_at)))
                    .collect(),
            ),
        }
    }

    /// The signer of the body's `signature` member: the current HMAC key (none for Ed25519).
    pub fn body_signer(&self) -> Option<&Signer> {
        match self {
            Signers::Hmac(v) => v.first().map(|(s, _)| s),
            Signers::Ed25519(_) => None,
        }
    }

    /// The signature headers of a request with `id`, `timestamp` and `body` at `now`.
    pub fn headers(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
        now: f64,
    ) -> Vec<(&'static str, String)> {
        let live = |exp: &Option<f64>| exp.is_none_or(|t| t > now);
        let mut out = Vec::with_capacity(4);
        let sigs: Vec<String> = match self {
            Signers::Hmac(v) => {
                if let Some((s, _)) = v.first() {
                    out.push(("X-Webhook-Signature", s.hex_signature(body)));
                }
                v.iter()
                    .filter(|(_, e)| live(e))
                    .map(|(s, _)| s.standard_signature(id, timestamp, body))
                    .collect()
            }
            Signers::Ed25519(v) => {
                let mut content = Vec::with_capacity(id.len() + body.len() + 16);
                content.extend_from_slice(id.as_bytes());
                content.push(b'.');
                content.extend_from_slice(timestamp.to_string().as_bytes());
                content.push(b'.');
                content.extend_from_slice(body);
                v.iter()
                    .filter(|(_, e)| live(e))
                    .map(|(k, _)| format!("v1a,{}", B64.encode(k.sign(&content).to_bytes())))
                    .collect()
            }
        };
        out.push(("webhook-id", id.to_string()));
        out.push(("webhook-timestamp", timestamp.to_string()));
        out.push(("webhook-signature", sigs.join(" ")));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier as _;

    #[test]
    fn hmac_rotation_signs_with_both_during_the_overlap() {
        let mut keys = vec![Key::generate(Signing::HmacSha256).expect("random")];
        assert!(keys[0].material.starts_with("whsec_"));
        let old = keys[0].clone();
        rotate(&mut keys, Signing::HmacSha256, 100.0, 1000.0).expect("random");
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0], old);
        let s = Signers::new(Signing::HmacSha256, &keys);
        let sig = |now| {
            s.headers("msg_1", 5, b"{}", now)
                .into_iter()
                .find(|(k, _)| *k == "webhook-signature")
                .map(|(_, v)| v)
                .unwrap_or_default()
        };
        assert_eq!(sig(1050.0).split(' ').count(), 2, "both during the overlap");
        assert_eq!(
            sig(1101.0).split(' ').count(),
            1,
            "only the new one after it"
        );
        let old_signer = Signer::new(&Secret::new(old.material)).expect("valid");
        assert!(sig(1050.0).contains(&old_signer.standard_signature("msg_1", 5, b"{}")));
        rotate(&mut keys, Signing::HmacSha256, 0.0, 2000.0).expect("random");
        assert_eq!(keys.len(), 1, "expired keys go at the next rotation");
    }

    #[test]
    fn a_given_secret_must_be_a_whsec_of_24_to_64_bytes() {
        let ok = format!("whsec_{}", B64.encode([7u8; 32]));
        assert_eq!(
            given_secret(&serde_json::json!(ok))
                .expect("valid")
                .material,
            ok
        );
        for bad in [
            serde_json::json!(format!("whsec_{}", B64.encode([7u8; 8]))),
            serde_json::json!("plain-secret-of-enough-length-000000"),
            serde_json::json!("whsec_%%%"),
            serde_json::json!(5),
        ] {
            let e = given_secret(&bad).expect_err("refused");
            assert_eq!(e.field, "secret");
        }
    }

    #[test]
    fn ed25519_signatures_verify_with_the_public_key() {
        let keys = vec![Key::generate(Signing::Ed25519).expect("random")];
        let (name, pk) = keys[0].shown();
        assert_eq!(name, "public_key");
        let pk: [u8; 32] = B64
            .decode(pk.strip_prefix(WHPK_PREFIX).expect("prefix"))
            .expect("base64")
            .try_into()
            .expect("32 bytes");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).expect("a key");
        let h = Signers::new(Signing::Ed25519, &keys).headers("msg_2", 7, b"{\"a\":1}", 0.0);
        assert!(!h.iter().any(|(k, _)| *k == "X-Webhook-Signature"));
        let sig = &h
            .iter()
            .find(|(k, _)| *k == "webhook-signature")
            .expect("signed")
            .1;
        let raw: [u8; 64] = B64
            .decode(sig.strip_prefix("v1a,").expect("v1a"))
            .expect("base64")
            .try_into()
            .expect("64 bytes");
        vk.verify(
            b"msg_2.7.{\"a\":1}",
            &ed25519_dalek::Signature::from_bytes(&raw),
        )
        .expect("verifies");
    }
}
