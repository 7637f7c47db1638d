//! The exceptions the engine's errors become, each carrying the engine's message.
//!
//! Each derives from the built-in exception a Python caller would catch:
//! `InvalidEventError` and `ConfigError` are `ValueError`s, `BusNotRunning` and
//! `QueueFull` are `RuntimeError`s, `LogError` is an `OSError`; anything else is a
//! `PmEventsError`.

use pm_events::BusError;
use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError, PyValueError};

create_exception!(
    pm.events,
    PmEventsError,
    PyException,
    "An engine error of no other kind."
);
create_exception!(
    pm.events,
    InvalidEventError,
    PyValueError,
    "An event the bus refuses: a bad type, or data that is not a JSON object."
);
create_exception!(
    pm.events,
    BusNotRunning,
    PyRuntimeError,
    "The bus is not started, or is stopping."
);
create_exception!(
    pm.events,
    QueueFull,
    PyRuntimeError,
    "The bus queue is full (publish_sync on the thread of the loop that runs the handlers)."
);
create_exception!(
    pm.events,
    ConfigError,
    PyValueError,
    "An environment variable has a value the engine cannot use."
);
create_exception!(
    pm.events,
    LogError,
    PyOSError,
    "The event log could not be written; the event was not accepted."
);

/// Adds the exceptions to the module.
pub fn register(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
    use pyo3::prelude::*;
    let py = m.py();
    m.add("PmEventsError", py.get_type::<PmEventsError>())?;
    m.add("InvalidEventError", py.get_type::<InvalidEventError>())?;
    m.add("BusNotRunning", py.get_type::<BusNotRunning>())?;
    m.add("QueueFull", py.get_type::<QueueFull>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("LogError", py.get_type::<LogError>())?;
    Ok(())
}

/// The Python exception of a bus error, with the engine's message and causes.
pub fn bus_error(e: BusError) -> PyErr {
    let message = pm_events::error::chain(&e);
    match e {
        BusError::InvalidEvent(_) => InvalidEventError::new_err(message),
        BusError::NotRunning(_) => BusNotRunning::new_err(message),
        BusError::QueueFull { .. } => QueueFull::new_err(message),
        BusError::Log(_) => LogError::new_err(message),
        _ => PmEventsError::new_err(message),
    }
}
