//! The queue between publishers and the dispatcher, behind one small trait so
//! the bus does not change shape when the queue moves out of the process.
//!
//! A transport takes an accepted event ([`Transport::publish`]), hands events
//! to the one dispatcher of this process ([`Consumer::next`]) and learns when
//! the handlers of an event have finished ([`Delivery::ack`]). It knows nothing
//! of handlers. `memory` is the embedded default; a NATS JetStream transport
//! (docs/scale-out.md) implements the same trait.
//!
//! Bounding is the bus's job: every published event carries a [`Permit`] from
//! the bus's capacity semaphore, and the transport decides when to release it
//! (the memory transport releases it when the event is acknowledged, so the
//! bound covers queued *and* in-flight events; a remote transport may release
//! it as soon as the remote side has the event).

pub mod contract;
pub mod memory;
pub mod nats;

pub use contract::{
    Ack, Consumer, Delivery, Permit, Priority, RemoteAck, Transport, TransportError,
};
pub use memory::MemoryTransport;
pub use nats::NatsTransport;
