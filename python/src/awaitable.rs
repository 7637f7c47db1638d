//! Engine futures as Python awaitables: run at once on the calling thread when
//! they need not wait (an awaitable that is complete already), else on the
//! engine's runtime with an asyncio future of the running loop.

use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::prelude::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The engine's runtime (pyo3-async-runtimes' tokio runtime, multi-threaded).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// An awaitable whose result is known already (`await` gives it at once).
#[pyclass(module = "pm.events._native")]
pub struct Ready(Option<Py<PyAny>>);

#[pymethods]
impl Ready {
    fn __await__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<()> {
        let value = self.0.take().unwrap_or_else(|| py.None());
        Err(PyStopIteration::new_err((value,)))
    }
}

/// How an engine result becomes the Python value an awaitable gives.
pub type ToPython<T> = fn(Python<'_>, T) -> PyResult<Py<PyAny>>;

/// Runs `fut` to its end: at once on this thread if it need not wait, else on the
/// engine's runtime. The awaitable gives `done`'s conversion of its output.
pub fn drive<F, T>(py: Python<'_>, fut: F, done: ToPython<T>) -> PyResult<Py<PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let mut fut = Box::pin(fut);
    // Poll in the runtime's context (the engine may spawn or use its timers);
    // a no-op waker is enough: if it is pending, the runtime polls it again.
    let first = py.detach(|| {
        let _guard = runtime().enter();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(&mut fut).poll(&mut cx)
    });
    match first {
        Poll::Ready(out) => Ok(Py::new(py, Ready(Some(done(py, out?)?)))?.into_any()),
        Poll::Pending => spawn_awaitable(py, fut, done),
    }
}

/// An asyncio future of the running loop that `fut`, run on the engine's
/// runtime, settles with `done`'s conversion of its output (or its error).
/// Cancelling the Python future does not stop `fut`: an event being accepted
/// is accepted all the same.
pub fn spawn_awaitable<F, T>(py: Python<'_>, fut: F, done: ToPython<T>) -> PyResult<Py<PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: Send + 'static,
{
    let event_loop = pyo3_async_runtimes::get_running_loop(py)
        .map_err(|_| PyRuntimeError::new_err("await this in a running asyncio loop"))?;
    let future = event_loop.call_method0("create_future")?;
    let settle = py.import("pm.events._pump")?.getattr("settle")?.unbind();
    let (event_loop, target) = (event_loop.unbind(), future.clone().unbind());
    runtime().spawn(async move {
        let out = fut.await;
        crate::python_calls::with_python(|py| {
            let (value, error) = match out.and_then(|v| done(py, v)) {
                Ok(v) => (v, py.None()),
                Err(e) => (py.None(), e.into_value(py).into_any()),
            };
            if let Err(e) = event_loop.bind(py).call_method1(
                "call_soon_threadsafe",
                (settle.bind(py), target.bind(py), value, error),
            ) {
                tracing::debug!(error = %e, "the loop awaiting a result is closed");
            }
        });
    });
    Ok(future.unbind())
}
