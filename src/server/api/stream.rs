//! `GET /api/v1/stream`: Server-Sent Events of accepted events (`event: event`, the
//! event as JSON), delivery attempts (`event: delivery`) and changes of the risk
//! dashboard (`event: risks`, `{"open_alerts": n}`; read `/api/v1/risks` for the
//! rest), live.
//!
//! Each message has an id `<run>-<n>`. The server keeps the last `REPLAY` (1,000) messages;
//! a client that reconnects with `Last-Event-ID` first gets those it missed (all
//! kept ones if the id is of an earlier run), then the live ones. A client that
//! falls more than the channel's bound behind is told so with an `event: lagged`
//! message and goes on from the newest.

use crate::Event;
use crate::handler::{Handler, HandlerError};
use crate::server::error::ApiError;
use crate::server::state::AppState;
use crate::server::stream_hub::Item;
pub use crate::server::stream_hub::{StreamHub, StreamLimits, StreamSlot};
use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use std::convert::Infallible;
use std::sync::{Arc, PoisonError};
use std::time::Duration;
use tokio::sync::broadcast;

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
    crate::server::limits::ClientIp(client): crate::server::limits::ClientIp,
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
