//! `pm.events._native`: the pm-events engine for Python. The Python package
//! `pm.events` (`python/pm/events/`) re-exports these under the specification's
//! module names; this crate only converts between Python and the engine.
//!
//! - [`bus`]: `EventBus` and `get_event_bus()`.
//! - [`event`]: the `Event` class.
//! - [`awaitable`]: engine futures as Python awaitables.
//! - [`native`]: a built-in handler's method subscribed runs the engine's handler.
//! - [`bridge`]: Python handlers run on the asyncio loop that started the bus.
//! - [`handlers`]: the built-in handlers.
//! - [`convert`]: Python values ⇄ JSON.
//! - [`errors`]: the exceptions.
//! - [`system`]: the process's running system, from the library's builder.
//! - [`shutdown`]: stopping the buses at interpreter exit.
//! - [`python_calls`]: calls into Python from the engine's threads, closed at exit.
//!
//! The engine's diagnostics (`tracing`, emitted as `log` records) go to Python's
//! `logging` under `pm.events` (`pm.events.bus.dispatch`, …).

mod awaitable;
mod bridge;
mod bus;
mod convert;
mod errors;
mod event;
mod handlers;
mod native;
mod python_calls;
mod shutdown;
mod system;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// The process-wide bus, made on first use from the environment.
static GLOBAL: PyOnceLock<Py<bus::PyEventBus>> = PyOnceLock::new();

/// The Python object of the process-wide bus.
fn global_bus(py: Python<'_>) -> PyResult<&Py<bus::PyEventBus>> {
    GLOBAL.get_or_try_init(py, || {
        let (bus, system) = system::global_bus(py)?;
        Py::new(py, bus::PyEventBus::over(bus, system))
    })
}

/// `get_event_bus()`: the process-wide bus (the same object on every call).
#[pyfunction]
fn get_event_bus(py: Python<'_>) -> PyResult<Py<bus::PyEventBus>> {
    global_bus(py).map(|b| b.clone_ref(py))
}

/// Forwards the engine's `log` records to Python's `logging`, renaming the
/// crate's target `pm_events::…` to the logger `pm.events.…`.
struct Renamed(pyo3_log::Logger);

impl log::Log for Renamed {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        python_calls::open()
            && python_calls::with_python(|_| self.0.enabled(metadata)).unwrap_or(false)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !python_calls::open() {
            return;
        }
        let target = match record.target().strip_prefix("pm_events") {
            Some(rest) => format!("pm.events{}", rest.replace("::", ".")),
            None => record.target().replace("::", "."),
        };
        python_calls::with_python(|_| {
            self.0.log(
                &log::Record::builder()
                    .args(*record.args())
                    .level(record.level())
                    .target(&target)
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            )
        });
    }

    fn flush(&self) {
        self.0.flush();
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    // Levels are read from `logging` on each record, so `setLevel` after import works.
    let logger = pyo3_log::Logger::new(py, pyo3_log::Caching::Loggers)?;
    let _ = log::set_boxed_logger(Box::new(Renamed(logger)))
        .map(|()| log::set_max_level(log::LevelFilter::Debug));
    m.add_class::<bus::PyEventBus>()?;
    m.add_class::<event::PyEvent>()?;
    m.add_class::<handlers::PyFileChangeHandler>()?;
    m.add_class::<handlers::PyReportReadyHandler>()?;
    m.add_class::<handlers::PyRiskAlertHandler>()?;
    m.add_class::<handlers::PyWebhookHandler>()?;
    m.add_function(wrap_pyfunction!(get_event_bus, m)?)?;
    m.add_function(wrap_pyfunction!(shutdown::_stop_all, m)?)?;
    errors::register(m)?;
    Ok(())
}
