//! What a subscriber is: the [`Handler`] trait, implemented for every
//! `async Fn(Event) -> Result<(), E>` closure, and [`Filter`]s.

use crate::event::Event;
use async_trait::async_trait;
use std::future::Future;
use std::sync::Arc;

/// The error a handler returns; its `Display` is logged with the event id.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Something that acts on events.
///
/// Every `async` closure or function `Fn(Event) -> impl Future<Output = Result<(), E>>`
/// with `E: Into<HandlerError>` is a handler; implement the trait yourself for
/// a handler with state or a name of its own.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Acts on one event. An `Err`, a panic or running past the bus's handler
    /// timeout is logged with the event id and counted; the bus goes on.
    async fn handle(&self, event: Event) -> Result<(), HandlerError>;

    /// A name for logs and diagnostics.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

#[async_trait]
impl<F, Fut, E> Handler for F
where
    F: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<HandlerError> + 'static,
{
    async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        (self)(event).await.map_err(Into::into)
    }

    fn name(&self) -> &str {
        "closure"
    }
}

/// A predicate deciding whether a subscription sees an event. It runs on the
/// dispatcher before anything is copied or spawned for the subscription, so
/// keep it cheap and non-blocking.
pub type Filter = Arc<dyn Fn(&Event) -> bool + Send + Sync + 'static>;
