//! What a transport is: the [`Transport`] trait its implementations fulfil,
//! the lanes ([`Priority`]), what a consumer receives ([`Delivery`]) and how it
//! is acknowledged ([`Ack`]), and the errors.

use crate::event::Event;
use async_trait::async_trait;
use tokio::sync::OwnedSemaphorePermit;

/// One unit of the bus's capacity, held while an event is in the transport's care.
pub type Permit = OwnedSemaphorePermit;

/// Which lane an event travels in. `High` events are handed to the dispatcher
/// before any waiting `Normal` one, so a flood of routine events cannot delay them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Priority {
    /// The ordinary lane.
    #[default]
    Normal,
    /// The priority lane.
    High,
}

/// Errors of a transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport is closed (the bus is stopping or stopped).
    #[error("the transport is closed")]
    Closed,
    /// Anything else the transport reports (connection lost, broker refused, ...).
    #[error("{0}")]
    Other(String),
}

/// How a delivery is acknowledged once its handlers are done.
#[non_exhaustive]
pub enum Ack {
    /// Releasing the capacity permit is the acknowledgement (in-process transports).
    Permit(Permit),
    /// A transport-specific acknowledgement (e.g. a JetStream message ack).
    Remote(Box<dyn RemoteAck>),
}

/// A transport-specific acknowledgement.
#[async_trait]
pub trait RemoteAck: Send {
    /// The handlers are done: the event must not be delivered again.
    async fn ack(self: Box<Self>) -> Result<(), TransportError>;
}

/// An event handed to the dispatcher, with what acknowledges it.
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// The lane it came through.
    pub priority: Priority,
    /// Acknowledges the event; dropping it unacknowledged counts as a failure
    /// for transports that redeliver.
    pub ack: Ack,
}

impl Delivery {
    /// Acknowledges the delivery.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.ack.done().await
    }
}

impl Ack {
    /// Acknowledges: the handlers of the event are done.
    pub async fn done(self) -> Result<(), TransportError> {
        match self {
            Ack::Permit(p) => {
                drop(p);
                Ok(())
            }
            Ack::Remote(r) => r.ack().await,
        }
    }
}

/// The receiving end of a transport, owned by the bus's dispatcher task.
#[async_trait]
pub trait Consumer: Send {
    /// The next event, or `None` once the transport is closed and drained.
    async fn next(&mut self) -> Option<Delivery>;

    /// The next event if one is ready now, without waiting (priority lane first).
    /// Lets the dispatcher take a burst of ready events in one go; the default
    /// takes none.
    fn try_next(&mut self) -> Option<Delivery> {
        None
    }
}

/// A queue of accepted events between publishers and the dispatcher.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// A short name for diagnostics (`"memory"`, `"nats"`).
    fn name(&self) -> &'static str;

    /// Opens the transport for a run of the bus and returns the consumer the
    /// dispatcher reads from. Called by `EventBus::start`.
    async fn open(&self) -> Result<Box<dyn Consumer>, TransportError>;

    /// Takes an accepted event. It must not fail once the event is logged,
    /// except when the transport is closed or broken.
    async fn publish(
        &self,
        event: Event,
        priority: Priority,
        permit: Permit,
    ) -> Result<(), TransportError>;

    /// Takes several events in order. The default publishes them one by one.
    async fn publish_batch(
        &self,
        items: Vec<(Event, Priority, Permit)>,
    ) -> Result<(), TransportError> {
        for (e, p, permit) in items {
            self.publish(e, p, permit).await?;
        }
        Ok(())
    }

    /// Whether every event published here is consumed here (in-process queue).
    /// A remote transport may hand a local event to another process, so the bus
    /// then waits at `stop` only for the events its own dispatcher took.
    fn is_local(&self) -> bool {
        true
    }

    /// Events taken but not yet handed to the dispatcher (in this process).
    fn queue_len(&self) -> usize;

    /// Refuses further publishes; the consumer drains what is queued, then ends.
    fn close(&self);
}
