//! The errors of the webhook system.

/// Errors of the webhook system.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// No secret is configured and unsigned delivery is not allowed.
    #[error(
        "WEBHOOK_SIGNATURE_SECRET is not set; refusing to send an unsigned webhook (set PM_ALLOW_UNSIGNED=1 to allow it)"
    )]
    Unsigned,
    /// The outbox database could not be used.
    #[error("webhook outbox: {context}")]
    Outbox {
        /// What was being done.
        context: String,
        /// The cause, if another error.
        #[source]
        source: Option<BoxError>,
    },
    /// A log file could not be written.
    #[error(transparent)]
    Log(#[from] crate::error::LogError),
    /// A setting is unusable.
    #[error("webhook configuration: {context}")]
    Config {
        /// Which setting, or what was being set up.
        context: String,
        /// The cause, if another error.
        #[source]
        source: Option<BoxError>,
    },
    /// A list was asked to continue after a delivery it does not hold.
    #[error("cursor: no delivery {0:?} (pass the next_cursor of a previous page)")]
    UnknownCursor(String),
    /// The JetStream work queue could not be used.
    #[error("webhook queue: {context}")]
    Queue {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },
}

/// A boxed cause of a [`WebhookError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl WebhookError {
    /// An outbox error while doing `context`, caused by `source`.
    pub(crate) fn outbox(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        WebhookError::Outbox {
            context: context.into(),
            source: Some(source.into()),
        }
    }
    /// An outbox error with no other cause (closed, stopped).
    pub(crate) fn outbox_state(context: impl Into<String>) -> Self {
        WebhookError::Outbox {
            context: context.into(),
            source: None,
        }
    }
    /// A configuration error of `context`, caused by `source`.
    pub(crate) fn config(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        WebhookError::Config {
            context: context.into(),
            source: Some(source.into()),
        }
    }
    /// A configuration error with no other cause.
    pub(crate) fn config_state(context: impl Into<String>) -> Self {
        WebhookError::Config {
            context: context.into(),
            source: None,
        }
    }
}
