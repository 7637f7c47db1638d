//! Error types of the library, one enum per area, each carrying its context
//! (which variable, which path, which event). Only the binary uses `anyhow`.

use std::path::PathBuf;

/// Errors of the JSON Lines logs (the main event log and the handler logs).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// A file or directory could not be created, opened, written or read.
    #[error("cannot {action} {path}")]
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
    /// Whether the disk (or the quota) is full: `ENOSPC`, `EDQUOT`.
    pub fn is_storage_full(&self) -> bool {
        match self {
            LogError::Io { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
                    || source.kind() == std::io::ErrorKind::QuotaExceeded
            }
            LogError::Closed => false,
        }
    }

    /// The kind of the underlying I/O error (`Other` when closed).
    pub(crate) fn io_kind(&self) -> std::io::ErrorKind {
        match self {
            LogError::Io { source, .. } => source.kind(),
            LogError::Closed => std::io::ErrorKind::Other,
        }
    }

    /// The underlying error's own message (without the action and path).
    pub(crate) fn root_message(&self) -> String {
        match self {
            LogError::Io { source, .. } => source.to_string(),
            LogError::Closed => self.to_string(),
        }
    }

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
    /// The write-ahead event log could not be opened or written; a publish that
    /// returns this did not accept its event.
    #[error("the event log cannot be written")]
    Log(#[from] LogError),
    /// The transport refused the event.
    #[error("the transport refused the event")]
    Transport(#[from] crate::transport::TransportError),
}

/// An error and its causes on one line, `outer: cause: root cause`, for the
/// places that show an error as text (HTTP answers, handler log lines).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
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
