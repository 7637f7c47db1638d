//! `EventBus`: the specification's bus, on the engine's `pm_events::EventBus`.
//!
//! `await bus.publish(...)` returns once the event's line is in the event log, as
//! in Rust. The engine usually accepts an event without waiting (the log's fast
//! path writes the line in the caller), so `publish` polls the engine's future
//! once on the calling thread and, when it is done, answers with an awaitable
//! that is complete already — no hop to another thread and back. When it would
//! wait (the queue is full, the log busy), the same future goes on on the
//! engine's runtime and the caller awaits it there.

use crate::awaitable::{drive, runtime, spawn_awaitable};
use crate::bridge::{Bridge, PyBridge, PyHandler};
use crate::convert::to_json;
use crate::errors::bus_error;
use crate::event::PyEvent;
use crate::native::native_handler;
use pm_events::handler::Handler;
use pm_events::{Event, EventBus};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::sync::{Arc, Mutex, PoisonError};

fn id_to_py(py: Python<'_>, id: String) -> PyResult<Py<PyAny>> {
    Ok(PyString::new(py, &id).into_any().unbind())
}

fn none_to_py(py: Python<'_>, _: ()) -> PyResult<Py<PyAny>> {
    Ok(py.None())
}

/// The event `publish` is given: an `Event`, or a type with `data`.
fn event_of(
    py: Python<'_>,
    event: &Bound<'_, PyAny>,
    data: Option<&Bound<'_, PyAny>>,
) -> PyResult<Event> {
    if let Ok(e) = event.cast::<PyEvent>() {
        if data.is_some_and(|d| !d.is_none()) {
            return Err(PyTypeError::new_err(
                "publish(event, data): give data only with an event type, not with an Event",
            ));
        }
        return e.borrow().to_event(py);
    }
    let Ok(ty) = event.extract::<String>() else {
        return Err(PyTypeError::new_err(
            "publish: the first argument is an Event or an event type (str)",
        ));
    };
    let data = match data {
        None => serde_json::Value::Object(Default::default()),
        Some(d) if d.is_none() => serde_json::Value::Object(Default::default()),
        Some(d) => to_json(d, "data")?,
    };
    if !data.is_object() {
        return Err(PyTypeError::new_err(format!(
            "data: expected a dict, got {}",
            pm_events::event::json_kind(&data)
        )));
    }
    Ok(Event::new(ty, data))
}

/// One subscription: its type, the Python callable given, the engine's id.
struct Subscription {
    event_type: String,
    handler: Py<PyAny>,
    id: pm_events::bus::SubscriptionId,
}

/// The specification's `EventBus`.
#[pyclass(name = "EventBus", module = "pm.events._native")]
pub struct PyEventBus {
    pub bus: EventBus,
    /// Python handlers' jobs and the loop they run on; shared with every `PyHandler`.
    bridge: Arc<Bridge>,
    /// What was subscribed, to find it again in `unsubscribe`.
    subscriptions: Mutex<Vec<Subscription>>,
    /// How many subscriptions on `*` are the system's (the delivery to the
    /// endpoints), not counted by `get_subscribers`.
    system: usize,
}

impl PyEventBus {
    /// A Python bus over `bus`, `system` of whose subscriptions on `*` are the system's.
    pub fn over(bus: EventBus, system: usize) -> Self {
        let bridge = Arc::new(Bridge::default());
        crate::shutdown::remember(&bus, &bridge);
        PyEventBus {
            bus,
            bridge,
            subscriptions: Mutex::new(Vec::new()),
            system,
        }
    }

    /// A new bus of the process's system (see [`crate::system`]).
    pub fn made(py: Python<'_>) -> PyResult<Self> {
        let (bus, system) = crate::system::new_bus(py)?;
        Ok(Self::over(bus, system))
    }
}

#[pymethods]
impl PyEventBus {
    /// `EventBus()`: configured from the environment (`PM_LOG_DIR`, `PM_NATS_URL`
    /// and the rest), no subscribers of its own; what it accepts is delivered to
    /// the endpoints and route variables that take it, as by the binary.
    #[new]
    fn new(py: Python<'_>) -> PyResult<Self> {
        Self::made(py)
    }

    /// Calls `handler(event)` for each event of `event_type` (`*`: every type).
    /// `handler` is an `async def` function, a plain function, or a built-in
    /// handler's method such as `FileChangeHandler().handle_file_change`.
    fn subscribe(&self, py: Python<'_>, event_type: String, handler: Py<PyAny>) -> PyResult<()> {
        let bound = handler.bind(py);
        if !bound.is_callable() {
            return Err(PyTypeError::new_err(
                "subscribe: the handler must be callable",
            ));
        }
        if event_type != "*" {
            pm_events::event::validate_type(&event_type)
                .map_err(crate::errors::InvalidEventError::new_err)?;
        }
        let id = match native_handler(bound, &self.bus)? {
            // A built-in handler's method runs in the engine, with no Python in between.
            Some(native) => self.bus.subscribe_arc(&event_type, native),
            None => {
                let name = bound
                    .getattr("__qualname__")
                    .and_then(|n| n.extract::<String>())
                    .unwrap_or_else(|_| "python handler".into());
                let h: Arc<dyn Handler> = Arc::new(PyHandler {
                    callable: Arc::new(handler.clone_ref(py)),
                    bridge: self.bridge.clone(),
                    name,
                });
                self.bus.subscribe_arc(&event_type, h)
            }
        };
        self.subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Subscription {
                event_type,
                handler,
                id,
            });
        Ok(())
    }

    /// Removes the subscription of `handler` to `event_type`; `False` if there was none.
    fn unsubscribe(&self, py: Python<'_>, event_type: &str, handler: Py<PyAny>) -> PyResult<bool> {
        let mut subs = self
            .subscriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for (i, s) in subs.iter().enumerate() {
            if s.event_type == event_type && s.handler.bind(py).eq(handler.bind(py))? {
                found = Some(i);
                break;
            }
        }
        Ok(match found {
            Some(i) => {
                let s = subs.remove(i);
                self.bus.unsubscribe(&s.event_type, s.id)
            }
            None => false,
        })
    }

    /// `await bus.publish(event_or_type, data=None)`: the event id, once the event is
    /// in the log. Raises `InvalidEventError` (bad type or data) or `BusNotRunning`.
    #[pyo3(signature = (event, data=None))]
    fn publish(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        data: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let event = event_of(py, event, data)?;
        let bus = self.bus.clone();
        drive(
            py,
            async move {
                // The library's door: the event's shape; a repeated id is accepted once.
                match pm_events::door::Door::library()
                    .admit(&bus, event, true)
                    .await
                {
                    Ok(a) => Ok(a.event_id),
                    Err(pm_events::door::DoorError::Bus(e)) => Err(bus_error(e)),
                    Err(e) => Err(crate::errors::InvalidEventError::new_err(e.to_string())),
                }
            },
            id_to_py,
        )
    }

    /// `bus.publish_sync(event_or_type, data=None)`: publishes from code that is not
    /// async; the event id. Waits for room in the queue if it must, except on the
    /// thread of the loop that runs the handlers (they could not free it), where a
    /// full queue raises `QueueFull`.
    #[pyo3(signature = (event, data=None))]
    fn publish_sync(
        &self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        data: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        let event = event_of(py, event, data)?;
        let bus = self.bus.clone();
        let on_loop = pyo3_async_runtimes::get_running_loop(py).is_ok();
        py.detach(|| {
            let _guard = runtime().enter();
            if on_loop {
                runtime().block_on(bus.try_publish(event, None))
            } else {
                runtime().block_on(bus.publish_event(event))
            }
        })
        .map_err(bus_error)
    }

    /// `await bus.start()`: begins dispatching. Python handlers run on the loop
    /// that awaits this.
    fn start(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let event_loop = pyo3_async_runtimes::get_running_loop(py).map_err(|_| {
            PyRuntimeError::new_err("start() must be awaited in a running asyncio loop")
        })?;
        let pump = py
            .import("pm.events._pump")?
            .getattr("pump")?
            .call1((Py::new(py, PyBridge(self.bridge.clone()))?,))?;
        self.bridge.attach(event_loop.unbind(), pump.unbind());
        let bus = self.bus.clone();
        spawn_awaitable(
            py,
            async move { bus.start().await.map_err(bus_error) },
            none_to_py,
        )
    }

    /// `await bus.stop()`: stops accepting, lets every accepted event be handled, flushes the logs.
    fn stop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let bus = self.bus.clone();
        drive(
            py,
            async move { bus.stop().await.map_err(bus_error) },
            none_to_py,
        )
    }

    /// Subscriber counts by type: `{"file_change": 2, ...}`.
    fn get_subscribers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, mut v) in self.bus.get_subscribers() {
            if k == "*" {
                v = v.saturating_sub(self.system);
            }
            if v > 0 {
                d.set_item(k, v)?;
            }
        }
        Ok(d)
    }

    /// Today's event log file (`<log dir>/events/events_YYYYMMDD.log`).
    fn get_log_file(&self) -> String {
        self.bus.get_log_file().display().to_string()
    }

    /// Events accepted and not yet handled.
    fn queue_len(&self) -> usize {
        self.bus.queue_len()
    }

    /// The engine's counters: `published`, `dispatched`, `unhandled` (no subscriber),
    /// and handler runs `handled`, `failed` (raised), `panicked`, `timed_out`;
    /// `redelivered` (dispatched again after a crash).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.bus.stats();
        let d = PyDict::new(py);
        for (k, v) in [
            ("published", s.published),
            ("dispatched", s.dispatched),
            ("unhandled", s.unhandled),
            ("handled", s.handled),
            ("failed", s.failed),
            ("panicked", s.panicked),
            ("timed_out", s.timed_out),
            ("redelivered", s.redelivered),
        ] {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Whether the bus is started and not stopped.
    fn is_running(&self) -> bool {
        self.bus.is_running()
    }

    /// The specification's debug snippet reads `bus._event_queue.qsize()`.
    #[getter]
    fn _event_queue(&self) -> QueueView {
        QueueView(self.bus.clone())
    }
}

/// `bus._event_queue`: the queue length as `qsize()`.
#[pyclass(module = "pm.events._native")]
pub struct QueueView(EventBus);

#[pymethods]
impl QueueView {
    /// Events accepted and not yet handled.
    fn qsize(&self) -> usize {
        self.0.queue_len()
    }
}
