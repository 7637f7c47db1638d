//! The door: every way an event comes in — `POST /events`, incoming webhooks
//! (the specification's form, Standard Webhooks, CloudEvents structured and
//! binary), `pm-events publish TYPE JSON`, `publish -` lines, Python's
//! `publish` — becomes one [`Event`] and is admitted in one place.
//!
//! 1. **Form.** Each entrance's form is read into an event by this module:
//!    [`envelope()`] (`POST /events` and `publish -` lines:
//!    `{"type","data","source"?,"event_id"?}`), [`from_parts`] (`publish TYPE
//!    JSON`) and [`webhook_forms`] (incoming webhooks). Every JSON text is
//!    parsed with [`crate::strict_json`] (a repeated key is refused) and every
//!    refusal names its field. A caller's id (`event_id`, `Idempotency-Key`,
//!    `webhook-id`, CloudEvents `id`) becomes the event's id.
//! 2. **Rules.** A [`Door`] adds the rules of its entrance: none for the
//!    library (its handlers log an invalid built-in payload as invalid), valid
//!    built-in payloads for the CLI, and for the server also the paths and
//!    addresses `PM_FILE_ROOTS` and `PM_MAIL_ALLOWED_DOMAINS` allow (the
//!    handlers' layer makes these doors: `handlers::operator_door`,
//!    `handlers::server_door`).
//! 3. **Admission.** [`Door::admit`] publishes on the bus once per id
//!    (`publish_once`, see [`crate::idempotency`]): the event's shape (type,
//!    id, source) is validated there, once, for every entrance, and a repeat of
//!    an id accepted in the last 24 hours is a duplicate.

pub mod envelope;
pub mod webhook_forms;

use crate::bus::EventBus;
use crate::error::BusError;
use crate::event::Event;
use crate::idempotency::Accepted;
use std::sync::Arc;

pub use envelope::{envelope, from_parts, line};

/// A boxed cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The rules a door adds to the event's shape: an error refuses the event.
pub type Rules = Arc<dyn Fn(&Event) -> Result<(), BoxError> + Send + Sync>;

/// Why an event was not admitted; each names the field or problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DoorError {
    /// The text is not JSON (or not UTF-8); the message says where.
    #[error("{0}")]
    Malformed(String),
    /// The JSON is not an event of this form; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The content type is not one this entrance reads.
    #[error(
        "unsupported content type {0:?}: send application/json, application/cloudevents+json, or CloudEvents binary mode (ce-* headers) with a JSON body"
    )]
    UnsupportedMediaType(String),
    /// The door's rules refused the event (their error is the source).
    #[error(transparent)]
    Refused(BoxError),
    /// The bus refused the event (an invalid shape, a full queue, a failed write).
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// An entrance's rules; see the module docs. Cheap to clone.
#[derive(Clone, Default)]
pub struct Door {
    rules: Option<Rules>,
}

impl std::fmt::Debug for Door {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("rules", &self.rules.is_some())
            .finish()
    }
}

impl Door {
    /// The library's door: the event's shape only.
    pub fn library() -> Door {
        Door::default()
    }

    /// A door with `rules` beyond the event's shape.
    pub fn with_rules(rules: Rules) -> Door {
        Door { rules: Some(rules) }
    }

    /// Applies the door's rules to `event`.
    pub fn check(&self, event: &Event) -> Result<(), DoorError> {
        match &self.rules {
            Some(rules) => rules(event).map_err(DoorError::Refused),
            None => Ok(()),
        }
    }

    /// Checks `event` and publishes it once per id: waits for room in the
    /// queue with `wait`, else answers [`BusError::QueueFull`] at once.
    pub async fn admit(
        &self,
        bus: &EventBus,
        event: Event,
        wait: bool,
    ) -> Result<Accepted, DoorError> {
        self.check(&event)?;
        Ok(if wait {
            bus.publish_once(event).await?
        } else {
            bus.try_publish_once(event).await?
        })
    }
}
