//! The demo's webhook receiver: an axum server on 127.0.0.1:0 that checks every
//! signature of what it receives, prints it, and fails the first attempts of
//! the paths it is told to.

use crate::cli::say;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use pm_events::config::Secret;
use pm_events::event::now_unix;
use pm_events::webhook::payload::verify_body_signature;
use pm_events::webhook::sign::{DEFAULT_TOLERANCE, verify_hex_signature, verify_standard};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

struct Shared {
    secrets: Vec<Secret>,
    /// Path → attempts to fail with 503 before answering 200.
    fail_first: HashMap<String, u32>,
    /// "path webhook-id" → attempts seen.
    seen: Mutex<HashMap<String, u32>>,
    /// Deliveries whose three signatures all verified.
    verified: Mutex<u32>,
}

/// A running demo receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn receive(
    State(s): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let id = header(&headers, "webhook-id").to_string();
    let attempt = {
        let mut seen = s.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let n = seen.entry(format!("{} {id}", uri.path())).or_default();
        *n += 1;
        *n
    };
    let hex = verify_hex_signature(&s.secrets, &body, header(&headers, "x-webhook-signature"));
    let standard = verify_standard(
        &s.secrets,
        &id,
        header(&headers, "webhook-timestamp"),
        &body,
        header(&headers, "webhook-signature"),
        now_unix() as i64,
        DEFAULT_TOLERANCE,
    );
    let member = verify_body_signature(&s.secrets, &body);
    let checks = match (&hex, &standard, &member) {
        (Ok(()), Ok(()), Ok(())) => {
            "signatures valid (X-Webhook-Signature, webhook-signature, body)".to_string()
        }
        _ => {
            format!("SIGNATURE CHECK FAILED: hex {hex:?}, standard {standard:?}, body {member:?}")
        }
    };
    let fail = s.fail_first.get(uri.path()).copied().unwrap_or(0);
    let status = if attempt <= fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    if status == StatusCode::OK && hex.is_ok() && standard.is_ok() && member.is_ok() {
        *s.verified.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }
    let event_type = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["event_type"].as_str().map(str::to_string))
        .unwrap_or_default();
    say!(
        "  webhook {:<18} {:<12} attempt {attempt}  answered {}  {checks}",
        uri.path(),
        event_type,
        status.as_u16()
    );
    status
}

impl Receiver {
    /// Starts listening on 127.0.0.1:0.
    pub async fn start(
        secrets: Vec<Secret>,
        fail_first: HashMap<String, u32>,
    ) -> std::io::Result<Receiver> {
        let shared = Arc::new(Shared {
            secrets,
            fail_first,
            seen: Mutex::new(HashMap::new()),
            verified: Mutex::new(0),
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "demo receiver stopped");
            }
        });
        Ok(Receiver { addr, shared, task })
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Deliveries answered 200 whose signatures all verified.
    pub fn verified(&self) -> u32 {
        *self
            .shared
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
