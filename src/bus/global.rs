//! The process-wide bus ([`get_event_bus`]).

use super::shared::EventBus;
use crate::config::Config;

use std::sync::OnceLock;

static GLOBAL: OnceLock<EventBus> = OnceLock::new();

/// The process-wide bus. The first call builds it from the environment
/// ([`Config::from_env`]; on an invalid value it logs the error and uses the
/// defaults) unless [`set_event_bus`] installed one before.
pub fn get_event_bus() -> &'static EventBus {
    GLOBAL.get_or_init(|| match Config::from_env() {
        Ok(c) => EventBus::builder().config(&c).build(),
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), "invalid configuration; the global event bus uses the defaults");
            EventBus::new()
        }
    })
}

/// Installs `bus` as the process-wide bus; fails (returning it) if one is set already.
pub fn set_event_bus(bus: EventBus) -> Result<(), EventBus> {
    GLOBAL.set(bus)
}
