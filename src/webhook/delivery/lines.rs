//! The attempt and dead-letter lines (`webhooks/webhook_attempts.jsonl`,
//! `webhooks/dead_letters.jsonl`) and the redaction of URLs in them.

use super::WebhookEngine;
use super::policy::Outcome;
use crate::event::now_unix;
use crate::timespec::rfc3339;
use crate::webhook::outbox::DeliveryRecord;
use serde::Serialize;

#[derive(Serialize)]
struct AttemptLine<'a> {
    timestamp: String,
    delivery_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    route: &'a str,
    url: String,
    attempt: u32,
    status: Option<u16>,
    error: Option<String>,
    response: Option<String>,
    duration_ms: f64,
    outcome: &'static str,
    next_retry_at: Option<String>,
    node: &'a str,
}

#[derive(Serialize)]
struct DeadLine<'a> {
    timestamp: String,
    delivery_id: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    route: &'a str,
    url: String,
    attempts: u32,
    reason: &'a str,
    node: &'a str,
}

/// What one attempt met.
pub(super) struct Tried {
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The network error, if none came.
    pub error: Option<String>,
    /// The start of the answer's body.
    pub response: Option<String>,
    /// How long it took.
    pub duration_ms: f64,
}

impl WebhookEngine {
    /// Why a delivery is dead (for its dead letter), warning about a 410.
    pub(super) fn dead_reason(&self, r: &DeliveryRecord, outcome: Outcome, reason: &str) -> String {
        if outcome == Outcome::Gone {
            tracing::warn!(url = %self.target(&r.url).redacted, route = %r.route, "webhook endpoint answered 410 Gone; remove it from the configuration");
        }
        match outcome {
            Outcome::Gone => "HTTP 410 Gone: the endpoint no longer exists".to_string(),
            Outcome::Failed => format!("{reason}: final (not retried)"),
            _ => format!("{reason}: retries exhausted after {} attempts", r.attempt),
        }
    }

    /// Writes the attempt line of `r`.
    pub(super) fn log_attempt(
        &self,
        r: &DeliveryRecord,
        t: Tried,
        outcome: Outcome,
        next_at: Option<f64>,
    ) {
        let outcome = outcome.as_str();
        let Tried {
            status,
            error,
            response,
            duration_ms,
        } = t;
        let line = AttemptLine {
            timestamp: rfc3339(now_unix()),
            delivery_id: &r.id,
            event_id: &r.event_id,
            event_type: &r.event_type,
            route: &r.route,
            url: self.target(&r.url).redacted.clone(),
            attempt: r.attempt,
            status,
            error,
            response,
            duration_ms: (duration_ms * 1000.0).round() / 1000.0,
            outcome,
            next_retry_at: next_at.map(rfc3339),
            node: &self.inner.cfg.node,
        };
        if let Err(e) = self.inner.attempts.append(&line) {
            tracing::error!(error = %crate::error::chain(&e), "cannot write the webhook attempt log");
        }
        tracing::debug!(delivery_id = %r.id, attempt = r.attempt, outcome, "webhook attempt");
    }

    pub(super) fn dead_letter(&self, r: &DeliveryRecord, reason: &str) {
        let line = DeadLine {
            timestamp: rfc3339(now_unix()),
            delivery_id: &r.id,
            event_id: &r.event_id,
            event_type: &r.event_type,
            route: &r.route,
            url: self.target(&r.url).redacted.clone(),
            attempts: r.attempt,
            reason,
            node: &self.inner.cfg.node,
        };
        if let Err(e) = self.inner.dead.append(&line) {
            tracing::error!(error = %crate::error::chain(&e), "cannot write the dead letter log");
        }
        tracing::warn!(delivery_id = %r.id, event_id = %r.event_id, reason, "webhook delivery failed for good");
    }
}
