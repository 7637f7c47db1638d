//! The [`EventBus`]: subscribe handlers, start, publish, stop.
//!
//! One concept per file: `builder` (settings), `subscriptions` (who
//! receives what), `publish` (acceptance: write-ahead, then the transport),
//! `pipeline` (many publishes in flight), `dispatch` (running handlers),
//! `recovery_feed` (what a crash left unhandled), `stats`, `global`
//! (the process-wide bus) and `lifecycle` (start, and the shutdown order).
//!
//! # How an event travels
//!
//! 1. `publish` validates the event and takes one unit of capacity (a permit
//!    of a semaphore of `queue_capacity` units): when none is free it waits
//!    (backpressure), `try_publish` fails with [`BusError::QueueFull`](crate::BusError::QueueFull).
//! 2. The event is written to the main event log (write-ahead); only then is
//!    it handed to the transport, and `publish` returns its id. A pipelined
//!    publish stages the event and returns at once; the pipeline writer writes
//!    what is staged in one call and then hands it over.
//! 3. The dispatcher task takes events from the transport (priority lane
//!    first), picks the subscriptions whose type (or `"*"`) and filter match,
//!    and spawns a task that runs those handlers concurrently, each under the
//!    handler timeout and with panics caught. Under load it takes up to 30 ready
//!    events at once and gives them one task (their handlers still run
//!    concurrently, interleaved); an idle bus spawns one task per event. At most
//!    `concurrency` events are in handlers at once.
//! 4. When every handler of the event is done, the event is recorded as done
//!    in the recovery ledger, acknowledged, and its capacity unit released.
//!
//! Events published *from inside a handler* do not wait for capacity (a
//! handler waiting for capacity that only handlers can free would deadlock the
//! bus) and are still accepted while the bus is stopping, so a handler's
//! follow-up events are never lost to a shutdown.
//!
//! # Who owns what
//!
//! `Inner` is shared by every clone of the bus and by the dispatcher; a
//! [`WeakEventBus`] does not keep it alive. `Run` exists from `start` to the
//! end of `stop`: publishers clone its `Arc` for the length of one publish, the
//! dispatcher, the recovery feeder and the pipeline writer hold it until they
//! end, and `stop` drops the last reference when it returns to `Idle`.
//!
//! # The shutdown order
//!
//! `stop` (in `lifecycle`) does, in this order:
//! 1. refuse publishes from outside (state `Stopping`; handlers may still publish);
//! 2. wait for the publishes under way, pipelined ones until they are written,
//!    and for the recovery feeder;
//! 3. in-process queue: wait until every accepted event, and every follow-up its
//!    handlers publish, is handled; then close the transport and wait for the
//!    dispatcher. Remote queue: close the transport first (stop taking events),
//!    wait for the dispatcher, then for the events it took;
//! 4. end the pipeline writer (nothing is staged any more);
//! 5. sync and close the event log;
//! 6. close the recovery ledger (its last ids written) and move the checkpoint.

mod builder;
mod dispatch;
mod global;
mod lifecycle;
mod pipeline;
mod publish;
mod recovery_feed;
mod shared;
mod staging;
mod stats;
mod subscriptions;
mod table;

pub use builder::EventBusBuilder;
pub use global::{get_event_bus, set_event_bus};
pub use publish::EventOrType;
pub use recovery_feed::TAKEOVER_INTERVAL;
pub use shared::{EventBus, PriorityRule, WeakEventBus};
pub use staging::{MAX_BATCH as PIPELINE_MAX_BATCH, PublishAck};
pub use stats::BusStats;
pub use table::{SubscriptionId, WILDCARD};
