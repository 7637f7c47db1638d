//! Incoming webhooks: verify, parse and publish what external services send
//! (the specification's `handle_incoming_webhook`, and `POST /webhooks/incoming`).
//!
//! **Signature** (required; checked over the raw body before anything is parsed):
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`,
//! timestamp within the tolerance, several signatures and secrets accepted), or the
//! specification's `X-Webhook-Signature: sha256=<hex>`.
//!
//! **Body**: read by the door ([`crate::door::webhook_forms`]: the
//! specification's payload, CloudEvents structured and binary), checked by
//! the server's door rules when given ([`IncomingWebhooks::with_door`]), and
//! admitted by the door: the event's id is its CloudEvents `id`, `webhook-id`
//! or `event_id`, so a webhook delivered again is a duplicate of the bus's
//! idempotent publish (24 h, across restarts, one memory for every entrance).

use super::sign::{self, DEFAULT_TOLERANCE, VerifyError, verify_hex_signature, verify_standard};
use crate::bus::EventBus;
use crate::door::{Door, DoorError};
use crate::event::{EventId, now_unix};
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::time::Duration;

/// Why an incoming webhook was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IncomingError {
    /// No valid signature (missing, malformed, wrong, expired).
    #[error("signature refused: {0}")]
    Unauthorized(#[from] VerifyError),
    /// The door refused it: its form, its rules or the bus (the source says which).
    #[error(transparent)]
    Door(#[from] DoorError),
}

/// What became of an accepted incoming webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingOutcome {
    /// Published on the bus.
    Published(EventId),
    /// Seen before (same id): acknowledged, not published again.
    Duplicate(EventId),
}

/// Verifies and publishes incoming webhooks.
pub struct IncomingWebhooks {
    secrets: Vec<Secret>,
    tolerance: Duration,
    door: Door,
}

/// The signature headers a request presents.
enum Presented<'h> {
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    Standard {
        id: &'h str,
        timestamp: &'h str,
        sig: &'h str,
    },
    /// `X-Webhook-Signature: sha256=<hex>`.
    Hex(&'h str),
}

impl IncomingWebhooks {
    /// Accepts webhooks signed with any of `secrets`.
    pub fn new(secrets: Vec<Secret>) -> Self {
        IncomingWebhooks {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
            door: Door::library(),
        }
    }

    /// Admits webhooks through `door` (the server's: built-in payloads valid,
    /// paths and addresses allowed); the library's door by default.
    pub fn with_door(mut self, door: Door) -> Self {
        self.door = door;
        self
    }

    /// Another timestamp tolerance for Standard Webhooks (default 5 minutes).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Checks the signature of `body` given `headers` (names lower-case).
    pub fn verify(
        &self,
        body: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<(), VerifyError> {
        let now = now_unix().floor() as i64;
        match self.presented(|k| headers.get(k).map(String::as_str))? {
            Presented::Standard { id, timestamp, sig } => {
                verify_standard(&self.secrets, id, timestamp, body, sig, now, self.tolerance)
            }
            Presented::Hex(sig) => verify_hex_signature(&self.secrets, body, sig),
        }
    }

    /// What the headers alone show, before any body byte is read: a secret to
    /// verify with, and a signature header of the right shape (for Standard
    /// Webhooks, an id and a timestamp within the tolerance). A request that
    /// fails here cannot pass [`verify`](Self::verify), so the server answers
    /// 401 without reading its body. `header` looks a header up by its
    /// lower-case name.
    pub fn precheck<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Result<(), VerifyError> {
        match self.presented(header)? {
            Presented::Standard { id, timestamp, sig } => sign::standard_headers(
                &self.secrets,
                id,
                timestamp,
                sig,
                now_unix().floor() as i64,
                self.tolerance,
            )
            .map(drop),
            Presented::Hex(sig) => sign::hex_signature_header(&self.secrets, sig).map(drop),
        }
    }

    /// Which signature scheme the headers use, and its header values; refused
    /// when this server has no secret or the request carries no signature.
    fn presented<'h>(
        &self,
        h: impl Fn(&str) -> Option<&'h str>,
    ) -> Result<Presented<'h>, VerifyError> {
        if self.secrets.is_empty() {
            return Err(VerifyError::Missing(
                "secret on this server (WEBHOOK_SIGNATURE_SECRET is not set), so no webhook can be verified",
            ));
        }
        match (h("webhook-signature"), h("x-webhook-signature")) {
            (Some(sig), _) => Ok(Presented::Standard {
                id: h("webhook-id").unwrap_or(""),
                timestamp: h("webhook-timestamp").unwrap_or(""),
                sig,
            }),
            (None, Some(sig)) => Ok(Presented::Hex(sig)),
            (None, None) => Err(VerifyError::Missing(
                "signature: send X-Webhook-Signature, or webhook-id, webhook-timestamp and webhook-signature",
            )),
        }
    }

    /// Verifies, reads and admits one incoming webhook (see the module docs).
    pub async fn handle(
        &self,
        bus: &EventBus,
        body: &[u8],
        headers: &BTreeMap<String, String>,
    ) -> Result<IncomingOutcome, IncomingError> {
        self.verify(body, headers)?;
        let event = crate::door::webhook_forms::event(body, headers)?;
        let accepted = self.door.admit(bus, event, false).await?;
        Ok(if accepted.duplicate {
            IncomingOutcome::Duplicate(accepted.event_id)
        } else {
            IncomingOutcome::Published(accepted.event_id)
        })
    }
}
