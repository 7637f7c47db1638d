//! What happened to deliveries, for `GET /api/v1/deliveries` and `pm-events deliveries`.
//!
//! Two sources are joined: the outbox (deliveries still pending, and dead ones) and
//! the attempt log `webhooks/webhook_attempts.jsonl` with its rotated files (every
//! attempt, so also the delivered deliveries, which leave the outbox). A delivery's
//! status is:
//!
//! - `pending`: in the outbox, not attempted yet;
//! - `failed`: in the outbox, attempted and waiting for its next retry;
//! - `dead`: failed for good (retries spent, a final 4xx, 410, or its endpoint removed);
//! - `delivered`: a 2xx answer.
//!
//! Lists are newest first (delivery ids are time-ordered UUID v7); a page ends with
//! a cursor, the last id shown, and the next page starts after it.

use super::outbox::{DeliveryRecord, DeliveryState, Outbox};
use crate::jsonl;
use crate::timespec::rfc3339;
use crate::webhook::error::WebhookError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// A delivery's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not attempted yet.
    Pending,
    /// Attempted, to be retried.
    Failed,
    /// Failed for good.
    Dead,
    /// Delivered.
    Delivered,
}

impl DeliveryStatus {
    /// Parses `pending`, `failed`, `dead` or `delivered`.
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }
}

/// One delivery as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryView {
    /// The delivery id.
    pub id: String,
    /// The event delivered.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The managed endpoint's id, or the route variable.
    pub endpoint_id: String,
    /// The URL (credentials and query removed).
    pub url: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The HTTP status of the last attempt, if it got an answer.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When it is tried next (RFC 3339), for pending and failed ones.
    pub next_retry_at: Option<String>,
    /// When it was queued (RFC 3339).
    pub created_at: String,
    /// When it was last attempted (RFC 3339), if it was.
    pub updated_at: Option<String>,
}

/// One attempt as the API shows it (a line of the attempt log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptView {
    /// 1 = the first try.
    pub attempt: u32,
    /// When it ended (RFC 3339).
    pub timestamp: String,
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// The network error, if none came.
    pub error: Option<String>,
    /// The start of the answer's body.
    #[serde(default)]
    pub response: Option<String>,
    /// How long it took.
    pub duration_ms: f64,
    /// `delivered`, `retry`, `failed`, `gone` or `dead`.
    pub outcome: String,
    /// When the next attempt is due, if one is.
    pub next_retry_at: Option<String>,
    /// The node that made it.
    #[serde(default)]
    pub node: Option<String>,
}

/// An attempt line with the delivery it belongs to.
#[derive(Deserialize)]
struct AttemptLine {
    delivery_id: String,
    event_id: String,
    event_type: String,
    route: String,
    url: String,
    #[serde(flatten)]
    view: AttemptView,
}

/// Which deliveries a list shows.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only this endpoint's (or route variable's).
    pub endpoint_id: Option<String>,
    /// Only this event's.
    pub event_id: Option<String>,
    /// Only those in this status.
    pub status: Option<DeliveryStatus>,
    /// At most this many (default 50, at most 1000).
    pub limit: Option<usize>,
    /// Those after this delivery id (the previous page's cursor).
    pub cursor: Option<String>,
}

/// The largest page.
pub const MAX_LIMIT: usize = 1000;

/// The time a UUID v7 id was made, as RFC 3339.
fn id_time(id: &str) -> Option<f64> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    Some(secs as f64 + f64::from(nanos) / 1e9)
}

/// Every delivery known, by id, with its attempts.
struct Joined {
    views: Vec<DeliveryView>,
    attempts: HashMap<String, Vec<AttemptView>>,
}

fn from_record(r: &DeliveryRecord) -> DeliveryView {
    let status = match (r.state, r.attempt) {
        (DeliveryState::Dead, _) => DeliveryStatus::Dead,
        (DeliveryState::Pending, 0) => DeliveryStatus::Pending,
        (DeliveryState::Pending, _) => DeliveryStatus::Failed,
    };
    DeliveryView {
        id: r.id.clone(),
        event_id: r.event_id.clone(),
        event_type: r.event_type.clone(),
        endpoint_id: r.route.clone(),
        url: super::delivery::redact_url(&r.url),
        status,
        attempts: r.attempt,
        last_status: None,
        last_error: r.last_error.clone(),
        next_retry_at: (r.state == DeliveryState::Pending).then(|| rfc3339(r.next_at)),
        created_at: rfc3339(r.created_at),
        updated_at: None,
    }
}

fn join(outbox: &Outbox, log_dir: &Path, only_id: Option<&str>) -> Result<Joined, WebhookError> {
    let mut attempts: HashMap<String, Vec<AttemptView>> = HashMap::new();
    let mut seen: HashMap<String, (String, String, String, String)> = HashMap::new();
    let path = log_dir.join("webhooks").join("webhook_attempts.jsonl");
    for l in jsonl::iter_rotated::<AttemptLine>(&path) {
        if only_id.is_some_and(|id| id != l.delivery_id) {
            continue;
        }
        seen.entry(l.delivery_id.clone())
            .or_insert((l.event_id, l.event_type, l.route, l.url));
        attempts.entry(l.delivery_id).or_default().push(l.view);
    }
    let mut rows: HashMap<String, DeliveryRecord> = HashMap::new();
    match only_id {
        Some(id) => {
            if let Some(r) = outbox.get(id)? {
                rows.insert(r.id.clone(), r);
            }
        }
        None => {
            for state in [DeliveryState::Pending, DeliveryState::Dead] {
                for r in outbox.list(state)? {
                    rows.insert(r.id.clone(), r);
                }
            }
        }
    }
    let mut views = Vec::with_capacity(rows.len() + seen.len());
    for (id, (event_id, event_type, route, url)) in &seen {
        if rows.contains_key(id) {
            continue;
        }
        let last = attempts.get(id).and_then(|a| a.last());
        let status = match last.map(|a| a.outcome.as_str()) {
            Some("delivered") => DeliveryStatus::Delivered,
            _ => DeliveryStatus::Dead,
        };
        views.push(DeliveryView {
            id: id.clone(),
            event_id: event_id.clone(),
            event_type: event_type.clone(),
            endpoint_id: route.clone(),
            url: url.clone(),
            status,
            attempts: last.map_or(0, |a| a.attempt),
            last_status: None,
            last_error: None,
            next_retry_at: None,
            created_at: id_time(id).map(rfc3339).unwrap_or_default(),
            updated_at: None,
        });
    }
    views.extend(rows.values().map(from_record));
    for v in &mut views {
        if let Some(last) = attempts.get(&v.id).and_then(|a| a.last()) {
            v.last_status = last.status;
            v.updated_at = Some(last.timestamp.clone());
            if v.last_error.is_none() && v.status != DeliveryStatus::Delivered {
                v.last_error = last
                    .error
                    .clone()
                    .or_else(|| last.status.map(|s| format!("HTTP {s}")));
            }
        }
    }
    views.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(Joined { views, attempts })
}

/// The deliveries `q` asks for, newest first, and the cursor of the next page
/// (`None`: this is the last). A cursor that names no delivery is refused
/// ([`WebhookError::UnknownCursor`]) rather than read as the first page.
pub fn list(
    outbox: &Outbox,
    log_dir: &Path,
    q: &Query,
) -> Result<(Vec<DeliveryView>, Option<String>), WebhookError> {
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    let j = join(outbox, log_dir, None)?;
    if let Some(c) = &q.cursor
        && !j.views.iter().any(|v| &v.id == c)
    {
        return Err(WebhookError::UnknownCursor(c.clone()));
    }
    let mut page: Vec<DeliveryView> = j
        .views
        .into_iter()
        .filter(|v| q.cursor.as_deref().is_none_or(|c| v.id.as_str() < c))
        .filter(|v| q.endpoint_id.as_deref().is_none_or(|e| v.endpoint_id == e))
        .filter(|v| q.event_id.as_deref().is_none_or(|e| v.event_id == e))
        .filter(|v| q.status.is_none_or(|s| v.status == s))
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|v| v.id.clone()).unwrap_or_default()
    });
    Ok((page, next))
}

/// The last hour's figures of `route` (an endpoint id or route variable) from the
/// attempt log, as `pm-events endpoints show` prints them.
pub fn figures(log_dir: &Path, route: &str, now: f64) -> super::delivery::HealthView {
    let path = log_dir.join("webhooks").join("webhook_attempts.jsonl");
    let lines = jsonl::iter_rotated::<AttemptLine>(&path).filter(|l| l.route == route);
    super::delivery::figures_from(
        lines.filter_map(|l| {
            let t = chrono::DateTime::parse_from_rfc3339(&l.view.timestamp).ok()?;
            let t = t.timestamp_micros() as f64 / 1e6;
            let ok = l.view.outcome == "delivered";
            let failed = matches!(l.view.outcome.as_str(), "retry" | "dead" | "gone").then(|| {
                l.view
                    .error
                    .clone()
                    .or_else(|| l.view.status.map(|s| format!("HTTP {s}")))
                    .unwrap_or_default()
            });
            (now - t <= 3600.0).then_some((t, ok, failed, l.view.duration_ms))
        }),
        now,
    )
}

/// One delivery with its attempts, oldest first.
pub fn get(
    outbox: &Outbox,
    log_dir: &Path,
    id: &str,
) -> Result<Option<(DeliveryView, Vec<AttemptView>)>, WebhookError> {
    let mut j = join(outbox, log_dir, Some(id))?;
    Ok(j.views
        .pop()
        .map(|v| (v, j.attempts.remove(id).unwrap_or_default())))
}
