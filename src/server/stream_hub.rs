//! The live stream's hub: what was published lately (replayed to a new
//! stream), the streams open, and the caps on them in all and per client.

use crate::server::error::ApiError;
use axum::http::StatusCode;
use axum::response::sse::Event as SseEvent;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::broadcast;

/// Messages kept for clients that reconnect.
pub const REPLAY: usize = 1000;

/// One message of the stream.
#[derive(Clone)]
pub(crate) struct Item {
    pub(crate) seq: u64,
    pub(crate) kind: &'static str,
    pub(crate) data: Arc<str>,
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
pub(crate) struct Open {
    pub(crate) total: usize,
    pub(crate) by_client: std::collections::HashMap<IpAddr, usize>,
}

/// One open stream's place, held by the stream's body and dropped with it
/// (when the client goes away or the server stops).
pub struct StreamSlot {
    pub(crate) hub: Arc<StreamHub>,
    pub(crate) client: IpAddr,
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
    pub(crate) run: String,
    /// The number of the next message.
    pub(crate) seq: AtomicU64,
    /// The last [`REPLAY`] messages; pushed by `push`, read by each new client.
    pub(crate) kept: Mutex<VecDeque<Item>>,
    /// Live messages to every connected client.
    pub(crate) live: broadcast::Sender<Item>,
    /// Cancelled when the server stops: every open stream ends.
    pub(crate) closed: tokio_util::sync::CancellationToken,
    /// The caps on open streams.
    pub(crate) limits: StreamLimits,
    /// The streams open now; changed by `open_slot` and `StreamSlot::drop`.
    pub(crate) open: Mutex<Open>,
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

    pub(crate) fn sse(&self, item: &Item) -> SseEvent {
        SseEvent::default()
            .id(format!("{}-{}", self.run, item.seq))
            .event(item.kind)
            .data(item.data.as_ref())
    }

    /// The number after which a client reconnecting with `last_id` resumes.
    pub(crate) fn resume_after(&self, last_id: Option<&str>) -> Option<u64> {
        let (run, n) = last_id?.rsplit_once('-')?;
        if run != self.run {
            return Some(0);
        }
        n.parse().ok()
    }
}
