"""Runs Python handlers on the asyncio loop that started the bus.

The engine queues each Python handler run and wakes the loop once per batch
(``python/src/bridge.rs``). ``pump(bridge)`` makes the function the loop is
woken with: it takes every queued run, calls the handler with its ``Event``,
and reports the outcomes in one call. A coroutine is stepped at once; if it
finishes without waiting (most do), no task is made for it, and if it waits it
goes on as an asyncio task from where it stopped. An exception becomes the
handler's error in the engine, which logs and counts it; the traceback is
logged at DEBUG under ``pm.events.handlers``.
"""

import asyncio
import functools
import inspect
import logging
import types

_log = logging.getLogger("pm.events.handlers")


def _describe(exc: BaseException) -> str:
    _log.debug("handler raised", exc_info=exc)
    return f"{type(exc).__name__}: {exc}"


@types.coroutine
def _continue(coro, yielded):
    """Goes on with a coroutine already stepped once, which yielded ``yielded``."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # passed in by the task (a cancellation, say)
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


async def _resume(coro, yielded):
    return await _continue(coro, yielded)


def _finished(bridge, job_id, task):
    if task.cancelled():
        # The loop is shutting down (asyncio.run cancels what is left) or someone
        # cancelled the run: it did not finish, so the event is not marked handled;
        # it is dispatched again on the next start (or ends at the handler timeout).
        _log.debug("a handler's task was cancelled; its event stays unhandled")
        return
    if task.exception() is not None:
        bridge.finish([(job_id, _describe(task.exception()))])
    else:
        bridge.finish([(job_id, None)])


def settle(future, value, error):
    """Gives ``future`` the engine's result (``error`` is an exception or None)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def pump(bridge):
    """The function that runs ``bridge``'s queued handler calls on this loop."""
    loop = asyncio.get_running_loop()

    def run():
        outcomes = []
        for job_id, handler, event in bridge.take():
            try:
                result = handler(event)
                if inspect.iscoroutine(result):
                    try:
                        yielded = result.send(None)
                    except StopIteration:
                        outcomes.append((job_id, None))
                        continue
                    task = loop.create_task(_resume(result, yielded))
                elif inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                else:
                    outcomes.append((job_id, None))
                    continue
                task.add_done_callback(functools.partial(_finished, bridge, job_id))
            except Exception as exc:
                outcomes.append((job_id, _describe(exc)))
        if outcomes:
            bridge.finish(outcomes)

    return run
