//! `GET /api/v1/stream`: Server-Sent Events of accepted events (`event: event`, the
//! event as JSON), delivery attempts (`event: delivery`) and changes of the risk
//! dashboard (`event: risks`, `{"open_alerts": n}`; read `/api/v1/risks` for the
//! rest), live.
//!
//! Each message has an id `<run>-<n>`. The server keeps the last [`REPLAY`] messages;
//! a client that reconnects with `Last-Event-ID` first gets those it missed (all
//! kept ones if the id is of an earlier run), then the live ones. A client that
//! falls more than the channel's bound behind is told so with an `event: lagged`
//! message and goes on from the newest.

use crate::Event;
use crate::handler::{Handler, HandlerError};
use crate::server::{ApiError, AppState};
use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;

/// Messages kept for clients that reconnect.
pub const REPLAY: usize = 1000;

/// One message of the stream.
#[derive(Clone)]
struct Item {
    seq: u64,
    kind: &'static str,
    data: Arc<str>,
}

/// How many live streams may be open: in all, and from one client address.
/// Both are kept below `serve --max-connections`, so streams alone cannot hold
/// every connection.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Streams open at once.
    pub total: usize,
    /// Streams open at once from one IP address.
    pub per_client: usize,
}

impl Default for StreamLimits {
    /// The defaults of `serve --max-streams` and `--max-streams-per-client`.
    fn default() -> Self {
        StreamLimits {
            total: 256,
            per_client: 16,
        }
    }
}

/// The open streams, counted per client address. Owned by the hub; a
/// [`StreamSlot`] takes one place and gives it back when dropped.
struct Open {
    total: usize,
    by_client: std::collections::HashMap<IpAddr, usize>,
}

/// One open stream's place, held by the stream's body and dropped with it
/// (when the client goes away or the server stops).
pub struct StreamSlot {
    hub: Arc<StreamHub>,
    client: IpAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.hub.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.by_client.remove(&self.client);
            }
        }
    }
}

/// The messages of the stream: a bounded replay buffer and the live channel.
pub struct StreamHub {
    /// This run's id (the process id and start time), the prefix of message ids.
    run: String,
    /// The number of the next message.
    seq: AtomicU64,
    /// The last [`REPLAY`] messages; pushed by `push`, read by each new client.
    kept: Mutex<VecDeque<Item>>,
    /// Live messages to every connected client.
    live: broadcast::Sender<Item>,
    /// Cancelled when the server stops: every open stream ends.
    closed: tokio_util::sync::CancellationToken,
    /// The caps on open streams.
    limits: StreamLimits,
    /// The streams open now; changed by `open_slot` and `StreamSlot::drop`.
    open: Mutex<Open>,
}

impl StreamHub {
    /// An empty hub.
    pub fn new(limits: StreamLimits) -> Self {
        StreamHub {
            run: format!(
                "{}{}",
                std::process::id(),
                chrono::Utc::now().timestamp_millis()
            ),
            seq: AtomicU64::new(1),
            kept: Mutex::new(VecDeque::with_capacity(REPLAY)),
            live: broadcast::channel(4096).0,
            closed: tokio_util::sync::CancellationToken::new(),
            limits,
            open: Mutex::new(Open {
                total: 0,
                by_client: std::collections::HashMap::new(),
            }),
        }
    }

    /// A place for one more stream from `client`, or the answer that refuses it
    /// (429 with `Retry-After`, and the connection closed).
    pub fn open_slot(self: &Arc<Self>, client: IpAddr) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = open.by_client.get(&client).copied().unwrap_or(0);
        let refusal = if open.total >= self.limits.total {
            Some(format!(
                "{} live streams are open, the most this server keeps (serve --max-streams)",
                open.total
            ))
        } else if mine >= self.limits.per_client {
            Some(format!(
                "{mine} live streams are open from {client}, the most one client may keep (serve --max-streams-per-client)"
            ))
        } else {
            None
        };
        if let Some(m) = refusal {
            return Err(
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", m)
                    .retry_after(5)
                    .closing(),
            );
        }
        open.total += 1;
        *open.by_client.entry(client).or_insert(0) += 1;
        Ok(StreamSlot {
            hub: self.clone(),
            client,
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Ends every open stream (the server is stopping).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Adds a message of `kind` with `data` (JSON).
    pub fn push(&self, kind: &'static str, data: String) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        // Numbered under the lock, so the buffer is in order.
        let item = Item {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            kind,
            data: data.into(),
        };
        if kept.len() == REPLAY {
            kept.pop_front();
        }
        kept.push_back(item.clone());
        drop(kept);
        let _ = self.live.send(item);
    }

    fn sse(&self, item: &Item) -> SseEvent {
        SseEvent::default()
            .id(format!("{}-{}", self.run, item.seq))
            .event(item.kind)
            .data(item.data.as_ref())
    }

    /// The number after which a client reconnecting with `last_id` resumes.
    fn resume_after(&self, last_id: Option<&str>) -> Option<u64> {
        let (run, n) = last_id?.rsplit_once('-')?;
        if run != self.run {
            return Some(0);
        }
        n.parse().ok()
    }
}

/// How often a `risks` message is sent at most while the dashboard keeps changing.
const RISKS_INTERVAL: Duration = Duration::from_millis(250);

/// Feeds the hub of `state`: every event the bus dispatches, every delivery
/// attempt and every change of the risk dashboard.
pub fn feed(state: &Arc<AppState>) {
    state
        .bus
        .subscribe_arc("*", Arc::new(StreamFeed(state.stream.clone())));
    let hub = state.stream.clone();
    let mut notices = state.webhooks.engine().notices();
    tokio::spawn(async move {
        loop {
            match notices.recv().await {
                Ok(n) => hub.push("delivery", serde_json::to_string(&*n).unwrap_or_default()),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let hub = state.stream.clone();
    let risks = state.risks.clone();
    let mut changes = risks.watch_dashboard();
    tokio::spawn(async move {
        // A burst of alerts is one message per interval, not one per alert.
        loop {
            tokio::select! {
                _ = hub.closed.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let open = risks.dashboard().open_alerts.len();
            hub.push("risks", format!("{{\"open_alerts\":{open}}}"));
            tokio::select! {
                _ = hub.closed.cancelled() => return,
                _ = tokio::time::sleep(RISKS_INTERVAL) => {}
            }
        }
    });
}

/// The handler that puts every event on the stream.
struct StreamFeed(Arc<StreamHub>);

#[async_trait]
impl Handler for StreamFeed {
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        self.0.push("event", event.to_json());
        Ok(())
    }

    fn name(&self) -> &str {
        "EventStream"
    }
}

/// `GET /api/v1/stream`.
pub async fn stream(
    State(s): State<Arc<AppState>>,
    crate::server::admission::ClientIp(client): crate::server::admission::ClientIp,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let hub = s.stream.clone();
    let slot = hub.open_slot(client)?;
    // Subscribe before reading the buffer: nothing falls between the two.
    let live = hub.live.subscribe();
    let after = hub.resume_after(headers.get("last-event-id").and_then(|v| v.to_str().ok()));
    let missed: Vec<Item> = match after {
        Some(after) => hub
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|i| i.seq > after)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let last_replayed = missed.last().map(|i| i.seq).unwrap_or(0);
    let replay = stream::iter(
        missed
            .into_iter()
            .map(|i| hub.sse(&i))
            .collect::<Vec<_>>()
            .into_iter()
            .map(Ok),
    );
    let hub2 = hub.clone();
    let live = stream::unfold((live, hub2, slot), move |(mut rx, hub, slot)| async move {
        loop {
            let got = tokio::select! {
                _ = hub.closed.cancelled() => return None,
                got = rx.recv() => got,
            };
            match got {
                Ok(item) if item.seq <= last_replayed => continue,
                Ok(item) => {
                    let ev = hub.sse(&item);
                    return Some((Ok(ev), (rx, hub, slot)));
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let ev = SseEvent::default()
                        .event("lagged")
                        .data(format!("{{\"missed\":{n}}}"));
                    return Some((Ok(ev), (rx, hub, slot)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt as _;
    Ok(Sse::new(replay.chain(live)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
