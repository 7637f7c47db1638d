//! The limits a request passes before a handler runs — body size and deadline,
//! bodies read at once before authentication, handler slots shared and
//! reserved — and the client address every request carries.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// The address a connection came from, put in each request's extensions by the
/// connection loop (`serve::serve_http`).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The client's IP address, as a handler's argument: the unspecified address
/// when the request did not come through the connection loop (in-process).
#[derive(Clone, Copy, Debug)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ClientAddr>()
                .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip()),
        ))
    }
}

/// The request-level limits (the connection-level ones are in `serve::ConnLimits`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time for a whole request body to arrive, before the handler runs.
    pub body_timeout: Duration,
    /// The largest body accepted (`PM_MAX_BODY_BYTES`).
    pub max_body: usize,
    /// Unauthenticated bodies read at once; more get 503 at once.
    pub max_pending_bodies: usize,
    /// Handler slots shared by every request.
    pub max_concurrency: usize,
    /// Handler slots kept for requests that showed the token.
    pub reserved: usize,
}

impl Default for Limits {
    /// The defaults of `serve`'s flags.
    fn default() -> Self {
        Limits {
            body_timeout: Duration::from_secs(10),
            max_body: crate::config::DEFAULT_MAX_BODY_BYTES,
            max_pending_bodies: 256,
            max_concurrency: 1024,
            reserved: 64,
        }
    }
}

/// The semaphores behind [`Limits`], shared by every request. Owned by the
/// server's `AppState`; a permit is held by one request and dropped with it.
pub struct Admission {
    pub(crate) limits: Limits,
    /// Shared handler slots.
    pub(crate) shared: Arc<Semaphore>,
    /// Slots only authenticated requests take when the shared ones are gone.
    pub(crate) reserved: Arc<Semaphore>,
    /// Unauthenticated bodies being read.
    pub(crate) bodies: Arc<Semaphore>,
}

impl Admission {
    /// Semaphores for `limits`.
    pub fn new(limits: Limits) -> Self {
        Admission {
            shared: Arc::new(Semaphore::new(limits.max_concurrency.max(1))),
            reserved: Arc::new(Semaphore::new(limits.reserved)),
            bodies: Arc::new(Semaphore::new(limits.max_pending_bodies.max(1))),
            limits,
        }
    }
}

/// Whether `content_type` is JSON: `application/json` or `application/<x>+json`.
pub fn is_json(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media == "application/json"
        || media
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json"))
}
