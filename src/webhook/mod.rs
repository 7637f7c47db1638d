//! Outgoing webhooks (docs/webhooks.md): signing, routing, the durable outbox,
//! the delivery engine, and the specification's [`WebhookHandler`].
//!
//! - [`sign`]: hex and Standard Webhooks signatures, verification with rotation.
//! - [`payload`]: the exact body sent, and its `signature` member.
//! - [`route`]: which variable's URL an event goes to.
//! - [`outbox`]: the SQLite outbox that makes deliveries survive restarts.
//! - [`delivery`]: the engine (HTTP client, per-endpoint bounds, retries, logs).
//! - [`history`]: what happened to deliveries, for the API and the CLI.
//! - [`jetstream`]: with `PM_NATS_URL`, deliveries as a JetStream work queue shared by every node.

pub mod delivery;
pub mod error;
pub mod history;
pub mod incoming;
pub mod jetstream;
pub mod outbox;
pub mod payload;
pub mod route;
pub mod sign;

use crate::config::{Config, Secret};
use crate::event::Event;
use crate::handler::{Handler, HandlerError};
use async_trait::async_trait;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use delivery::{DeliveryConfig, RetryError, WaitOutcome, WebhookEngine};
pub use error::{BoxError, WebhookError};
pub use route::{Route, Routes};
pub use sign::{Signer, VerifyError};

/// The specification's `WebhookHandler`: routes events to their webhook URLs and queues
/// signed deliveries; verifies signatures of incoming ones.
///
/// As a [`Handler`] it triggers the webhook of every event it is subscribed to.
pub struct WebhookHandler {
    /// Retries after the first attempt (default 5).
    pub max_retries: u32,
    /// Time limit of one attempt (default 10 s).
    pub timeout: Duration,
    engine: WebhookEngine,
    routes: Routes,
    secrets: Vec<Secret>,
    incoming: incoming::IncomingWebhooks,
    /// Delivery ids queued, when tracking is on (`track_deliveries`).
    queued: Option<Mutex<Vec<String>>>,
    /// Deliveries put in the JetStream work queue (see [`take_handed_off`](Self::take_handed_off)).
    handed_off: std::sync::atomic::AtomicUsize,
    /// Deliveries asked for that existed already (a replayed or repeated event
    /// for a managed endpoint): nothing was sent for them (see
    /// [`take_repeats`](Self::take_repeats)).
    repeats: std::sync::atomic::AtomicUsize,
}

impl WebhookHandler {
    /// The specification's `WebhookHandler(max_retries=...)`: configured from the environment,
    /// with `max_retries` retries.
    pub fn new(max_retries: u32) -> Result<Self, WebhookError> {
        let mut c = Config::from_env().map_err(|e| WebhookError::config("the environment", e))?;
        c.webhook_max_retries = max_retries;
        Self::from_config(&c)
    }

    /// A handler for `config`: its routes, secrets and delivery settings.
    pub fn from_config(config: &Config) -> Result<Self, WebhookError> {
        let engine =
            WebhookEngine::open(DeliveryConfig::from_config(config), &config.webhook_secrets)?;
        Ok(Self::with_engine(
            engine,
            Routes::from_config(config),
            config.webhook_secrets.clone(),
        ))
    }

    /// A handler over an existing engine.
    pub fn with_engine(engine: WebhookEngine, routes: Routes, secrets: Vec<Secret>) -> Self {
        let c = engine.config();
        WebhookHandler {
            max_retries: c.max_retries,
            timeout: c.timeout,
            engine,
            routes,
            incoming: incoming::IncomingWebhooks::new(secrets.clone()),
            secrets,
            queued: None,
            handed_off: std::sync::atomic::AtomicUsize::new(0),
            repeats: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Records the ids of the deliveries this handler queues ([`take_queued`](Self::take_queued)).
    pub fn track_deliveries(mut self) -> Self {
        self.queued = Some(Mutex::new(Vec::new()));
        self
    }

    /// The delivery ids queued since the last call (when tracking is on).
    pub fn take_queued(&self) -> Vec<String> {
        self.queued
            .as_ref()
            .map(|q| std::mem::take(&mut *q.lock().unwrap_or_else(PoisonError::into_inner)))
            .unwrap_or_default()
    }

    /// How many deliveries went to the JetStream work queue since the last call
    /// (they are not tracked: any node may deliver them).
    pub fn take_handed_off(&self) -> usize {
        self.handed_off
            .swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// How many deliveries asked for since the last call existed already, so
    /// nothing was sent for them (when tracking is on).
    pub fn take_repeats(&self) -> usize {
        self.repeats.swap(0, std::sync::atomic::Ordering::Relaxed)
    }

    /// The delivery engine.
    pub fn engine(&self) -> &WebhookEngine {
        &self.engine
    }

    /// The routes.
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Queues a delivery of `event` to `route`.
    pub async fn trigger(&self, event: &Event, route: &Route) -> Result<String, WebhookError> {
        let hand_off = self.hands_off();
        let id = if self.queued.is_some() && !hand_off {
            self.engine.enqueue_watched(event, route).await?
        } else {
            self.engine.enqueue(event, route).await?
        };
        self.note(std::slice::from_ref(&id), hand_off);
        Ok(id)
    }

    /// Whether deliveries queued here go to a work queue another node delivers
    /// from (nothing to wait for here).
    fn hands_off(&self) -> bool {
        self.engine.uses_jetstream() && !self.engine.takes_from_queue()
    }

    /// Queues `event` for every managed endpoint that takes it (its types and
    /// filter; a disabled endpoint keeps the delivery until it is enabled). Returns
    /// `(endpoint id, delivery id)` per endpoint; a repeat of an event sends nothing
    /// new (the first delivery's id is returned).
    pub async fn fan_out(&self, event: &Event) -> Result<Vec<(String, String)>, WebhookError> {
        let Some(eps) = self.engine.endpoints() else {
            return Ok(Vec::new());
        };
        let ms = eps.matching(event);
        if ms.is_empty() {
            return Ok(Vec::new());
        }
        let hand_off = self.hands_off();
        let ids = self
            .engine
            .enqueue_endpoints(event, &ms, self.queued.is_some() && !hand_off)
            .await?;
        self.note(&ids, hand_off);
        Ok(ms.iter().map(|m| m.endpoint.id.clone()).zip(ids).collect())
    }

    /// Counts deliveries handed to the work queue, or tracks queued ones.
    fn note(&self, ids: &[String], hand_off: bool) {
        if hand_off {
            self.handed_off
                .fetch_add(ids.len(), std::sync::atomic::Ordering::Relaxed);
        } else if let Some(q) = &self.queued {
            // A delivery made before (by an earlier run) stands for a repeat: it
            // is not this run's to wait for or to count as delivered.
            let (new, old): (Vec<&String>, Vec<&String>) =
                ids.iter().partition(|id| !self.engine.take_repeat(id));
            self.repeats
                .fetch_add(old.len(), std::sync::atomic::Ordering::Relaxed);
            q.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(new.into_iter().cloned());
        }
    }

    /// Queues `event` for the managed endpoint `m` only (as `fan_out` does for each).
    pub async fn trigger_endpoint(
        &self,
        event: &Event,
        m: &crate::endpoint::Managed,
    ) -> Result<String, WebhookError> {
        let hand_off = self.hands_off();
        let id = self
            .engine
            .enqueue_endpoint(event, m, self.queued.is_some() && !hand_off)
            .await?;
        self.note(std::slice::from_ref(&id), hand_off);
        Ok(id)
    }

    /// The specification's `handle_webhook_trigger(event)`: queues the event's webhook if a
    /// route is configured for it; returns the delivery id (`None`: no route).
    pub async fn handle_webhook_trigger(
        &self,
        event: &Event,
    ) -> Result<Option<String>, WebhookError> {
        match self.routes.for_event(event) {
            Some(route) => self.trigger(event, &route).await.map(Some),
            None => Ok(None),
        }
    }

    /// The specification's `handle_incoming_webhook(payload, signature, headers)`: verifies
    /// the signature (`signature` is the `X-Webhook-Signature` value, if given
    /// apart from `headers`), parses the payload and publishes it on `bus`; the
    /// same logic as `POST /webhooks/incoming` (see [`incoming`]).
    pub async fn handle_incoming_webhook(
        &self,
        bus: &crate::EventBus,
        payload: &[u8],
        signature: Option<&str>,
        headers: &std::collections::BTreeMap<String, String>,
    ) -> Result<incoming::IncomingOutcome, incoming::IncomingError> {
        let mut h: std::collections::BTreeMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(s) = signature {
            h.insert("x-webhook-signature".into(), s.to_string());
        }
        h.entry("content-type".into())
            .or_insert_with(|| "application/json".into());
        self.incoming.handle(bus, payload, &h).await
    }

    /// The specification's `verify_webhook_signature(payload, signature)`: checks a
    /// `sha256=<hex>` signature of `payload` against the configured secrets.
    pub fn verify_webhook_signature(&self, payload: &[u8], signature: &str) -> bool {
        sign::verify_hex_signature(&self.secrets, payload, signature).is_ok()
    }
}

/// The handler that fans every event out to the managed endpoints
/// ([`WebhookHandler::fan_out`]); subscribed to `*` beside the others.
pub struct EndpointFanOut(pub std::sync::Arc<WebhookHandler>);

#[async_trait]
impl Handler for EndpointFanOut {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.0.fan_out(&event).await?;
        Ok(())
    }

    fn name(&self) -> &str {
        "EndpointFanOut"
    }
}

#[async_trait]
impl Handler for WebhookHandler {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.handle_webhook_trigger(&event).await?;
        Ok(())
    }

    fn name(&self) -> &str {
        "WebhookHandler"
    }
}
