//! The NATS JetStream transport (docs/scale-out.md): the same bus over a real
//! distributed log.
//!
//! - Every event is published to the subject `pm.events.<type>` of the stream
//!   `PM_EVENTS` (created if missing, subjects `pm.events.>`), with the header
//!   `Nats-Msg-Id: <event_id>` so JetStream drops a duplicate publish within its
//!   de-duplication window. `publish` returns once JetStream has acknowledged the
//!   event (it is then durable on the server); the local capacity unit is released
//!   at that point.
//! - Each bus consumes through the durable pull consumer named by its consumer group
//!   (`PM_CONSUMER_GROUP`): processes sharing a group share the work; every event is
//!   acknowledged only after its handlers finish, so the events of a process that dies
//!   are redelivered (after `ack_wait`) to another one.
//! - A consumer that ends or keeps failing (server restarted, consumer deleted) is
//!   opened again every second until it works. A deleted consumer made again starts
//!   at the stream's first event, as a new group does (and as a restart would):
//!   events are handled again rather than lost.
//! - `close` stops fetching and hands back at once (a *nak*) what was fetched ahead and
//!   not dispatched; what was dispatched is finished and acknowledged by the bus.

use super::contract::{
    Ack, Consumer, Delivery, Permit, Priority, RemoteAck, Transport, TransportError,
};
use crate::event::Event;
use async_nats::jetstream::{self, consumer::AckPolicy, consumer::PullConsumer};
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A client of the NATS server at `url`, giving up on the first connection after 10 s
/// (the transport, the webhook work queue and the endpoint store share it).
pub async fn connect_client(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(10))
        .connect(url)
        .await
}

/// Name of the JetStream stream.
pub const STREAM: &str = "PM_EVENTS";
/// Subject prefix of the events.
pub const SUBJECT_PREFIX: &str = "pm.events.";

fn other(e: impl std::fmt::Display) -> TransportError {
    TransportError::Other(e.to_string())
}

/// The NATS JetStream transport.
pub struct NatsTransport {
    js: jetstream::Context,
    group: String,
    ack_wait: Duration,
    max_ack_pending: i64,
    /// Cancelled by `close`; a new one per `open`.
    stop: std::sync::Mutex<CancellationToken>,
}

impl NatsTransport {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`) and makes sure the stream exists.
    /// `ack_wait` should exceed the handler timeout: it is how long an event may be in
    /// handlers before JetStream hands it to someone else.
    pub async fn connect(
        url: &str,
        group: &str,
        ack_wait: Duration,
    ) -> Result<Self, TransportError> {
        let client = connect_client(url)
            .await
            .map_err(|e| other(format!("cannot connect to NATS at {url}: {e}")))?;
        let js = jetstream::new(client);
        js.get_or_create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECT_PREFIX}>")],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| other(format!("JetStream stream {STREAM}: {e}")))?;
        Ok(NatsTransport {
            js,
            group: group.to_string(),
            ack_wait,
            max_ack_pending: 1024,
            stop: std::sync::Mutex::new(CancellationToken::new()),
        })
    }
}

/// Hands back the messages `stream` fetched ahead and nobody took, each with a
/// *nak* delayed by a second (so they do not come straight back to this stream
/// while it is drained): the next consumer of the durable consumer gets them then,
/// not after `ack_wait`. Drains until nothing arrives for 50 ms, at most 2 s.
pub(crate) async fn hand_back_fetched(stream: &mut jetstream::consumer::pull::Stream) {
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let next = (tokio::time::Instant::now() + Duration::from_millis(50)).min(until);
        match tokio::time::timeout_at(next, stream.next()).await {
            Ok(Some(Ok(m))) => {
                let _ = m
                    .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
            _ => return,
        }
    }
}

struct NatsAck(jetstream::Message);

#[async_trait]
impl RemoteAck for NatsAck {
    async fn ack(self: Box<Self>) -> Result<(), TransportError> {
        self.0.ack().await.map_err(other)
    }
}

struct NatsConsumer {
    messages: Messages,
    stop: CancellationToken,
}

/// Opens the message stream of a durable pull consumer (creating the consumer if missing).
pub(crate) type Open = Box<
    dyn Fn() -> BoxFuture<'static, Result<jetstream::consumer::pull::Stream, String>> + Send + Sync,
>;

/// The messages of a durable pull consumer, kept flowing: a stream that ends or
/// keeps failing (server restarted, consumer deleted) is opened again every second
/// until that works; once stopped, what was fetched ahead is handed back.
pub(crate) struct Messages {
    stream: Option<jetstream::consumer::pull::Stream>,
    open: Open,
    /// What the messages are, for the logs.
    what: &'static str,
}

impl Messages {
    /// Messages from `open`, opened on the first `next`.
    pub(crate) fn new(what: &'static str, open: Open) -> Self {
        Messages {
            stream: None,
            open,
            what,
        }
    }

    /// The next message; `None` once `stop` is cancelled.
    pub(crate) async fn next(&mut self, stop: &CancellationToken) -> Option<jetstream::Message> {
        let mut errors = 0u32;
        loop {
            let pause = match &mut self.stream {
                None => match (self.open)().await {
                    Ok(m) => {
                        self.stream = Some(m);
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot consume the {}; retrying", self.what);
                        Duration::from_secs(1)
                    }
                },
                Some(stream) => {
                    let next = tokio::select! {
                        _ = stop.cancelled() => {
                            hand_back_fetched(stream).await;
                            return None;
                        }
                        m = stream.next() => m,
                    };
                    match next {
                        Some(Ok(m)) => return Some(m),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "error consuming the {}; retrying", self.what);
                            errors += 1;
                            if errors < 10 {
                                Duration::from_millis(200)
                            } else {
                                errors = 0;
                                self.stream = None;
                                Duration::from_secs(1)
                            }
                        }
                        None => {
                            self.stream = None;
                            Duration::from_secs(1)
                        }
                    }
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// The durable consumer of a group.
#[derive(Clone)]
struct Source {
    js: jetstream::Context,
    group: String,
    ack_wait: Duration,
    max_ack_pending: i64,
}

impl Source {
    /// The messages of the group's durable consumer (created if missing).
    async fn messages(self) -> Result<jetstream::consumer::pull::Stream, String> {
        durable_messages(
            &self.js,
            STREAM,
            &self.group,
            self.ack_wait,
            self.max_ack_pending,
        )
        .await
    }
}

/// The messages of the durable pull consumer `name` of `stream` (created if
/// missing), acknowledged one by one.
pub(crate) async fn durable_messages(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> Result<jetstream::consumer::pull::Stream, String> {
    let s = js
        .get_stream(stream)
        .await
        .map_err(|e| format!("JetStream stream {stream}: {e}"))?;
    let consumer: PullConsumer = s
        .get_or_create_consumer(
            name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.to_string()),
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("JetStream consumer {name}: {e}"))?;
    consumer
        .messages()
        .await
        .map_err(|e| format!("JetStream consumer {name}: {e}"))
}

#[async_trait]
impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let msg = self.messages.next(&self.stop).await?;
            match serde_json::from_slice::<Event>(&msg.payload) {
                Ok(event) => {
                    return Some(Delivery {
                        event,
                        priority: Priority::Normal,
                        ack: Ack::Remote(Box::new(NatsAck(msg))),
                    });
                }
                Err(e) => {
                    // Not an event: acknowledge it so it is not redelivered forever.
                    tracing::warn!(subject = %msg.subject, error = %e, "undecodable message on the event stream skipped");
                    let _ = msg.ack().await;
                }
            }
        }
    }
}

#[async_trait]
impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn is_local(&self) -> bool {
        false
    }

    async fn open(&self) -> Result<Box<dyn Consumer>, TransportError> {
        let source = Source {
            js: self.js.clone(),
            group: self.group.clone(),
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
        };
        // The first opening must work (a start fails with its reason); later ones are retried.
        let first = source.clone().messages().await.map_err(other)?;
        let mut messages = Messages::new(
            "event stream",
            Box::new(move || Box::pin(source.clone().messages())),
        );
        messages.stream = Some(first);
        let stop = CancellationToken::new();
        *self.stop.lock().map_err(|_| TransportError::Closed)? = stop.clone();
        Ok(Box::new(NatsConsumer { messages, stop }))
    }

    async fn publish(
        &self,
        event: Event,
        _priority: Priority,
        permit: Permit,
    ) -> Result<(), TransportError> {
        let subject = format!("{SUBJECT_PREFIX}{}", event.event_type);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        let payload = serde_json::to_vec(&event).map_err(other)?;
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(other)?;
        ack.await.map_err(other)?;
        drop(permit);
        Ok(())
    }

    fn queue_len(&self) -> usize {
        0
    }

    fn close(&self) {
        if let Ok(t) = self.stop.lock() {
            t.cancel();
        }
    }
}
