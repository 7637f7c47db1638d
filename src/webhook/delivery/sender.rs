//! One HTTP attempt: the signed request and what the answer said.

use super::WebhookEngine;
use super::policy::parse_retry_after;
use crate::endpoint::Managed;
use crate::event::now_unix;
use crate::webhook::outbox::DeliveryRecord;
use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

/// How much of a receiver's answer body is read (and dropped) to keep its
/// connection for reuse; a longer body closes the connection instead.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Who a delivery goes to, as far as its signature and settings go.
pub(super) enum Destination {
    /// A route variable: signed with `WEBHOOK_SIGNATURE_SECRET`, the engine's settings.
    Env,
    /// A managed endpoint: its own keys, headers, timeout and retries.
    Managed(Arc<Managed>),
}

/// What a receiver answered.
pub(super) struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// Its `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// The start of its body (at most [`EXCERPT_LIMIT`] bytes, as text).
    pub excerpt: String,
}

/// How much of an answer's body the attempt log keeps.
pub const EXCERPT_LIMIT: usize = 256;

impl WebhookEngine {
    /// One attempt: the answer, or the error text (without the URL).
    pub(super) async fn send(
        &self,
        r: &DeliveryRecord,
        to: &Destination,
    ) -> Result<Answer, String> {
        let i = &*self.inner;
        let target = self.target(&r.url);
        let client = match (to, self.guarded()) {
            (Destination::Managed(_), Some((guarded, guard))) => {
                // An address in the URL is not resolved: check it here (the allowed
                // networks may have changed since the endpoint was made).
                if let Some(ip) = target
                    .url
                    .as_ref()
                    .and_then(crate::endpoint::guard::host_ip)
                {
                    guard.check(ip).map_err(|e| format!("refused: {e}"))?;
                }
                guarded
            }
            _ => &i.client,
        };
        let req = match &target.url {
            Some(u) => client.post(u.clone()),
            None => client.post(&r.url),
        };
        // The attempt's span, in the event's trace; the receiver gets its traceparent.
        let mut span = crate::telemetry::start(
            "webhook.attempt",
            crate::telemetry::Kind::Attempt,
            r.traceparent.as_deref(),
            || {
                vec![
                    opentelemetry::KeyValue::new("pm.delivery_id", r.id.clone()),
                    opentelemetry::KeyValue::new("pm.endpoint", r.route.clone()),
                    opentelemetry::KeyValue::new("pm.event_id", r.event_id.clone()),
                    opentelemetry::KeyValue::new("pm.attempt", i64::from(r.attempt)),
                    opentelemetry::KeyValue::new("url.full", target.redacted.clone()),
                ]
            },
        );
        let traceparent = span
            .traceparent()
            .map(str::to_string)
            .or_else(|| r.traceparent.clone())
            .unwrap_or_else(crate::telemetry::fresh_traceparent);
        let mut req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("traceparent", traceparent);
        let now = now_unix();
        let ts = now.floor() as i64;
        match to {
            Destination::Env => {
                if let Some(s) = &i.signer {
                    for (k, v) in s.headers(&r.event_id, ts, &r.body) {
                        req = req.header(k, v);
                    }
                }
            }
            Destination::Managed(m) => {
                for (k, v) in m.signers().headers(&r.event_id, ts, &r.body, now) {
                    req = req.header(k, v);
                }
                for (k, v) in m.endpoint.headers.iter().flatten() {
                    req = req.header(k.as_str(), v.as_str());
                }
                if let Some(t) = m.endpoint.timeout_secs {
                    req = req.timeout(Duration::from_secs_f64(t));
                }
            }
        }
        match req.body(r.body.clone()).send().await {
            Ok(mut resp) => {
                let retry_after = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, Utc::now()));
                // Read the answer's body (under the same timeout), so that the
                // connection goes back to the pool: dropped unread, it is
                // closed, and the next delivery opens a new one. A body past
                // DRAIN_LIMIT, or one that fails, only costs that connection.
                let mut read = 0;
                let mut head: Vec<u8> = Vec::new();
                while read <= DRAIN_LIMIT {
                    match resp.chunk().await {
                        Ok(Some(c)) => {
                            if head.len() < EXCERPT_LIMIT {
                                let take = (EXCERPT_LIMIT - head.len()).min(c.len());
                                head.extend_from_slice(&c[..take]);
                            }
                            read += c.len();
                        }
                        _ => break,
                    }
                }
                let status = resp.status().as_u16();
                span.set(|| {
                    opentelemetry::KeyValue::new("http.response.status_code", i64::from(status))
                });
                if !(200..300).contains(&status) {
                    span.fail(|| format!("HTTP {status}"));
                }
                Ok(Answer {
                    status,
                    retry_after,
                    excerpt: String::from_utf8_lossy(&head).into_owned(),
                })
            }
            Err(e) => {
                let kind = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                let e = e.without_url();
                let mut msg = format!("{kind}: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                span.fail(|| msg.clone());
                Err(msg)
            }
        }
    }
}
