//! `Event`: the specification's dataclass — `type`, `data`, `timestamp`,
//! `event_id`, `source` — with `to_dict()` and `to_json()`.
//!
//! `data` is kept as the Python object given (a dict), so a handler sees and may
//! change it as it would a dataclass field; it is converted to JSON when the
//! event is published.

use crate::convert::{to_json, to_py};
use pm_events::Event;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// An event: what happened (`type`), its payload (`data`) and where it came from.
#[pyclass(name = "Event", module = "pm.events._native", eq)]
pub struct PyEvent {
    /// The event type, e.g. `file_change`.
    #[pyo3(get, set)]
    pub r#type: String,
    /// The payload, a dict.
    #[pyo3(get, set)]
    pub data: Py<PyAny>,
    /// When it was made, Unix seconds.
    #[pyo3(get, set)]
    pub timestamp: f64,
    /// Its unique id (a UUID unless given).
    #[pyo3(get, set)]
    pub event_id: String,
    /// The system it came from.
    #[pyo3(get, set)]
    pub source: String,
}

impl PartialEq for PyEvent {
    fn eq(&self, other: &Self) -> bool {
        self.event_id == other.event_id
            && self.r#type == other.r#type
            && self.timestamp == other.timestamp
            && self.source == other.source
            && Python::attach(|py| self.data.bind(py).eq(other.data.bind(py)).unwrap_or(false))
    }
}

#[pymethods]
impl PyEvent {
    /// `Event(type, data)`, as in the specification; the other fields may be given too.
    #[new]
    #[pyo3(signature = (r#type, data=None, timestamp=None, event_id=None, source=None))]
    fn new(
        py: Python<'_>,
        r#type: String,
        data: Option<Py<PyAny>>,
        timestamp: Option<f64>,
        event_id: Option<String>,
        source: Option<String>,
    ) -> Self {
        let template = Event::new(r#type.clone(), serde_json::Value::Null);
        PyEvent {
            r#type,
            data: data.unwrap_or_else(|| PyDict::new(py).into_any().unbind()),
            timestamp: timestamp.unwrap_or(template.timestamp),
            event_id: event_id.unwrap_or(template.event_id),
            source: source.unwrap_or(template.source),
        }
    }

    /// `{"type", "data", "timestamp", "event_id", "source"}`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("type", &self.r#type)?;
        d.set_item("data", self.data.bind(py))?;
        d.set_item("timestamp", self.timestamp)?;
        d.set_item("event_id", &self.event_id)?;
        d.set_item("source", &self.source)?;
        Ok(d)
    }

    /// The event as one line of JSON, the form of the event log.
    fn to_json(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.to_event(py)?.to_json())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let data = self
            .data
            .bind(py)
            .repr()
            .map(|r| r.to_string())
            .unwrap_or_default();
        format!(
            "Event(type={:?}, data={data}, timestamp={}, event_id={:?}, source={:?})",
            self.r#type, self.timestamp, self.event_id, self.source
        )
    }
}

impl PyEvent {
    /// The engine's event; `ValueError`/`TypeError` naming the field when `data` is not JSON.
    pub fn to_event(&self, py: Python<'_>) -> PyResult<Event> {
        let data = to_json(self.data.bind(py), "data")?;
        if !data.is_object() {
            return Err(PyValueError::new_err(format!(
                "data: expected a dict, got {}",
                pm_events::event::json_kind(&data)
            )));
        }
        let mut e = Event::new(self.r#type.clone(), data);
        e.timestamp = self.timestamp;
        e.event_id = self.event_id.clone();
        e.source = self.source.clone();
        Ok(e)
    }

    /// The Python form of an engine event.
    pub fn from_event(py: Python<'_>, e: &Event) -> PyResult<Self> {
        Ok(PyEvent {
            r#type: e.event_type.clone(),
            data: to_py(py, &e.data)?.unbind(),
            timestamp: e.timestamp,
            event_id: e.event_id.clone(),
            source: e.source.clone(),
        })
    }
}
