//! The in-process transport: two unbounded tokio channels, one per
//! [`Priority`] lane, drained high lane first. It is bounded by the permits
//! the bus attaches to each event (released when the event is acknowledged),
//! so it needs no bound of its own.

use super::contract::{Ack, Consumer, Delivery, Permit, Priority, Transport, TransportError};
use crate::event::Event;
use async_trait::async_trait;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

type Item = (Event, Permit);

/// The embedded, in-process transport (the default).
#[derive(Default)]
pub struct MemoryTransport {
    /// The sending ends of the current run: `None` before `open` and after
    /// `close`. Dropping them is what lets the consumer end once drained.
    senders: Mutex<Option<Senders>>,
    /// Events sent but not yet received by the consumer; shared with it.
    queued: Arc<AtomicUsize>,
}

struct Senders {
    high: mpsc::UnboundedSender<Item>,
    normal: mpsc::UnboundedSender<Item>,
}

impl MemoryTransport {
    /// A closed transport; `open` starts a run.
    pub fn new() -> Self {
        Self::default()
    }

    fn send(&self, event: Event, priority: Priority, permit: Permit) -> Result<(), TransportError> {
        let guard = self.senders.lock().map_err(|_| TransportError::Closed)?;
        let s = guard.as_ref().ok_or(TransportError::Closed)?;
        let lane = match priority {
            Priority::High => &s.high,
            Priority::Normal => &s.normal,
        };
        self.queued.fetch_add(1, Ordering::Relaxed);
        lane.send((event, permit)).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            TransportError::Closed
        })
    }
}

struct MemoryConsumer {
    high: mpsc::UnboundedReceiver<Item>,
    normal: mpsc::UnboundedReceiver<Item>,
    queued: Arc<AtomicUsize>,
}

impl MemoryConsumer {
    fn delivery(&self, item: Item, priority: Priority) -> Delivery {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let (event, permit) = item;
        Delivery {
            event,
            priority,
            ack: Ack::Permit(permit),
        }
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn next(&mut self) -> Option<Delivery> {
        let (item, priority) = tokio::select! {
            biased;
            Some(item) = self.high.recv() => (item, Priority::High),
            Some(item) = self.normal.recv() => (item, Priority::Normal),
            else => return None,
        };
        Some(self.delivery(item, priority))
    }

    fn try_next(&mut self) -> Option<Delivery> {
        if let Ok(item) = self.high.try_recv() {
            return Some(self.delivery(item, Priority::High));
        }
        let item = self.normal.try_recv().ok()?;
        Some(self.delivery(item, Priority::Normal))
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn open(&self) -> Result<Box<dyn Consumer>, TransportError> {
        let (high_tx, high) = mpsc::unbounded_channel();
        let (normal_tx, normal) = mpsc::unbounded_channel();
        let mut guard = self
            .senders
            .lock()
            .map_err(|_| TransportError::Other("memory transport lock poisoned".into()))?;
        *guard = Some(Senders {
            high: high_tx,
            normal: normal_tx,
        });
        Ok(Box::new(MemoryConsumer {
            high,
            normal,
            queued: self.queued.clone(),
        }))
    }

    async fn publish(
        &self,
        event: Event,
        priority: Priority,
        permit: Permit,
    ) -> Result<(), TransportError> {
        self.send(event, priority, permit)
    }

    async fn publish_batch(
        &self,
        items: Vec<(Event, Priority, Permit)>,
    ) -> Result<(), TransportError> {
        for (e, p, permit) in items {
            self.send(e, p, permit)?;
        }
        Ok(())
    }

    fn queue_len(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn close(&self) {
        if let Ok(mut g) = self.senders.lock() {
            *g = None;
        }
    }
}
