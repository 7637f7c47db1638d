//! Secrets: a string that never prints itself, and the key bytes a webhook
//! signing secret stands for.
//!
//! A leaf module: configuration reads secrets, signing uses their keys, and
//! neither has to know the other.

use base64::Engine as _;
use base64::alphabet::STANDARD as STANDARD_ALPHABET;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use std::fmt;

/// The prefix of a Standard Webhooks symmetric secret (`whsec_<base64 key>`).
pub const WHSEC_PREFIX: &str = "whsec_";

/// A secret string: its `Debug` and `Display` print `***`, so it cannot leak
/// into a log line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value, exactly as given (spaces included).
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself; call only where it is used (signing, comparing).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The Standard Webhooks HMAC key: a `whsec_` secret's base64-decoded rest,
    /// else the secret's UTF-8 bytes.
    pub fn standard_key(&self) -> Result<Vec<u8>, InvalidSecret> {
        match self.0.strip_prefix(WHSEC_PREFIX) {
            Some(b64) => B64_SECRET.decode(b64).map_err(|_| InvalidSecret),
            None => Ok(self.0.as_bytes().to_vec()),
        }
    }
}

/// A `whsec_` secret whose rest is not base64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a whsec_ secret must be followed by base64")]
pub struct InvalidSecret;

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Standard base64 that accepts a secret with or without its `=` padding.
const B64_SECRET: GeneralPurpose = GeneralPurpose::new(
    &STANDARD_ALPHABET,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whsec_keys_decode_and_plain_secrets_are_their_bytes() {
        assert_eq!(
            Secret::new("whsec_aGVsbG8").standard_key().unwrap(),
            b"hello"
        );
        assert_eq!(
            Secret::new("It's a Secret to Everybody")
                .standard_key()
                .unwrap(),
            b"It's a Secret to Everybody"
        );
        assert_eq!(Secret::new("whsec_!!").standard_key(), Err(InvalidSecret));
        assert_eq!(
            format!("{:?} {}", Secret::new("x"), Secret::new("x")),
            "Secret(***) ***"
        );
    }
}
