//! Error types of the library, one enum per area, each carrying its context
//! (which variable, which path, which event). Only the binary uses `anyhow`.

use std::path::PathBuf;

/// Errors of the JSON Lines logs (the main event log and the handler logs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A file or directory could not be created, opened, written or read.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("create directory", "append to", ...).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The log writer is closed (the bus was stopped).
    #[error("the event log writer is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LogError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Errors returned by [`EventBus`](crate::EventBus) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// `publish` was called on a bus that has not been started (or was stopped).
    #[error("the event bus is not running: call `start()` before publishing (state: {0})")]
    NotRunning(&'static str),
    /// `start` was called on a bus that is already running.
    #[error("the event bus is already running")]
    AlreadyRunning,
    /// The event is malformed.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// `try_publish` found the bounded queue full.
    #[error("the event queue is full ({capacity} events waiting); retry later")]
    QueueFull {
        /// The configured queue capacity.
        capacity: usize,
    },
    /// `publish_sync` was called from inside an async runtime, where it would block it.
    #[error("publish_sync called from inside an async runtime; use `publish(..).await` there")]
    SyncInAsync,
    /// The write-ahead event log could not be written; the event was not accepted.
    #[error("event not accepted: {0}")]
    Log(#[from] LogError),
    /// The transport refused the event.
    #[error("transport error: {0}")]
    Transport(String),
}

/// An invalid configuration value: names the variable, what it holds and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {var}={value:?}: expected {expected}")]
pub struct ConfigError {
    /// The environment variable (or setting) at fault.
    pub var: String,
    /// The value found (never a secret: secrets are not echoed).
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
}
