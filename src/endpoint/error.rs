//! The errors of endpoint management.

use super::keys::RandomError;
use super::model::FieldError;

/// Errors of endpoint management.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// No endpoint has this id.
    #[error("no endpoint {0}")]
    NotFound(String),
    /// An environment endpoint cannot be changed over the API.
    #[error(
        "endpoint {0} comes from the environment and is read-only; change the variable instead"
    )]
    ReadOnly(String),
    /// A field was refused.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A key could not be made.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The store could not be used.
    #[error("{context}")]
    Store {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl EndpointError {
    pub(crate) fn store(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        EndpointError::Store {
            context: context.into(),
            source: source.into(),
        }
    }
}
