"""The binding's own promises: handlers on the loop, errors as exceptions with
the engine's message, the log shared with `pm-events serve`."""

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import pm_events_binary, lines


def test_python_handlers_run_on_the_loop_that_started_the_bus_and_errors_do_not_stop_others(run_script):
    p, logs = run_script(
        """
        import asyncio, json, logging, threading
        logging.basicConfig(level=logging.WARNING)
        from pm.events.bus import EventBus
        threads, order = set(), []
        async def waits(event):
            threads.add(threading.get_ident())
            await asyncio.sleep(0.001)
            order.append(('waits', event.data['n']))
        def plain(event):
            threads.add(threading.get_ident())
            order.append(('plain', event.data['n']))
        async def fails(event):
            raise KeyError('missing')
        async def main():
            bus = EventBus()
            for h in (waits, plain, fails):
                bus.subscribe('job', h)
            await bus.start()
            for n in range(50):
                await bus.publish('job', {'n': n})
            await bus.stop()
            s = bus.stats()
            print(json.dumps([len(threads), threads == {threading.get_ident()}, len(order), s['handled'], s['failed']]))
        asyncio.run(main())
        """
    )
    assert p.returncode == 0, p.stderr
    # 100 runs of the two good handlers; the 50 that raised are counted as failed.
    assert json.loads(p.stdout) == [1, True, 100, 100, 50]
    # Each of the 50 failures was logged by the engine, under pm.events, with the exception.
    failures = [l for l in p.stderr.splitlines() if "handler failed" in l and "KeyError: 'missing'" in l]
    assert len(failures) == 50, p.stderr
    assert all(l.startswith("ERROR:pm.events.") for l in failures)


def test_errors_are_python_exceptions_with_the_engines_message(run_script):
    p, _ = run_script(
        """
        import asyncio, json
        from pm.events import InvalidEventError, BusNotRunning
        from pm.events.bus import EventBus, Event
        from pm.events.handlers import RiskAlertHandler
        out = {}
        async def main():
            bus = EventBus()
            try:
                await bus.publish('file_change', {'file_path': '/x'})
            except BusNotRunning as e:
                out['not_started'] = str(e)
            await bus.start()
            try:
                await bus.publish('bad type!', {})
            except InvalidEventError as e:
                out['bad_type'] = (str(e), isinstance(e, ValueError))
            try:
                await bus.publish('x', {'items': [1, {2, 3}]})
            except TypeError as e:
                out['not_json'] = str(e)
            try:
                await bus.publish('x', ['not', 'a', 'dict'])
            except TypeError as e:
                out['not_dict'] = str(e)
            try:
                await bus.publish(Event('x', {}, event_id='line1\\nline2'))
            except InvalidEventError as e:
                out['bad_id'] = str(e)
            out['invalid_builtin_id'] = await bus.publish('risk_alert', {'alert_id': 'a', 'severity': 5})
            try:
                await RiskAlertHandler().handle_risk_alert(Event('risk_alert', {'alert_id': 'a', 'severity': 5}))
            except ValueError as e:
                out['invalid_payload'] = str(e)
            await bus.stop()
            print(json.dumps(out))
        asyncio.run(main())
        """
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert "not running" in out["not_started"] or "not started" in out["not_started"], out
    assert out["bad_type"][1] is True and "bad type!" in out["bad_type"][0]
    assert out["not_json"].startswith("data.items[1]: a set is not JSON"), out
    assert "data: expected a dict" in out["not_dict"]
    assert "event_id: contains '\\n'" in out["bad_id"], out
    assert len(out["invalid_builtin_id"]) == 36, out
    assert "data.risk_type" in out["invalid_payload"] or "data.severity" in out["invalid_payload"], out


def test_an_event_left_by_a_python_handler_at_exit_is_handled_on_the_next_start(run_script):
    # The handler cannot finish: the loop ends (no stop()) while it waits.
    p, logs = run_script(
        """
        import asyncio
        from pm.events.bus import EventBus
        async def slow(event):
            await asyncio.sleep(3600)
        async def main():
            bus = EventBus()
            bus.subscribe('job', slow)
            await bus.start()
            await bus.publish('job', {'n': 1})
            await asyncio.sleep(0.05)
        asyncio.run(main())
        """
    )
    assert p.returncode == 0, p.stderr
    p, _ = run_script(
        """
        import asyncio, json
        from pm.events.bus import EventBus
        seen = []
        async def quick(event):
            seen.append(event.data)
        async def main():
            bus = EventBus()
            bus.subscribe('job', quick)
            await bus.start()
            for _ in range(200):
                if seen:
                    break
                await asyncio.sleep(0.01)
            await bus.stop()
            print(json.dumps(seen))
        asyncio.run(main())
        """
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [{"n": 1}]




@pytest.mark.skipif(pm_events_binary() is None, reason="the pm-events binary is not built (cargo build)")
def test_a_python_process_and_pm_events_serve_share_one_log_directory(run_script, tmp_path):
    logs = tmp_path / "logs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PM_")}
    env.update({"PM_LOG_DIR": str(logs), "RUST_LOG": "warn"})
    serve = subprocess.Popen([pm_events_binary(), "serve", "--bind", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = serve.stdout.readline().strip().rsplit(" ", 1)[-1]
        p, _ = run_script(
            """
            import asyncio
            from pm.events.bus import EventBus
            from pm.events.handlers import RiskAlertHandler
            async def main():
                bus = EventBus()
                bus.subscribe('risk_alert', RiskAlertHandler().handle_risk_alert)
                await bus.start()
                await bus.publish('risk_alert', {'alert_id': 'py-1', 'risk_type': 'security', 'severity': 'critical',
                                                 'title': 'From Python', 'risk_score': 0.9})
                await bus.stop()
            asyncio.run(main())
            """
        )
        assert p.returncode == 0, p.stderr
        deadline = time.time() + 20
        while True:
            with urllib.request.urlopen(f"{url}/api/v1/risks") as r:
                risks = json.load(r)
            if [a["alert_id"] for a in risks["open_alerts"]] == ["py-1"] or time.time() > deadline:
                break
            time.sleep(0.05)
        assert [a["alert_id"] for a in risks["open_alerts"]] == ["py-1"], risks
        with urllib.request.urlopen(f"{url}/api/v1/events?type=risk_alert") as r:
            events = json.load(r)["data"]
        assert [e["data"]["alert_id"] for e in events] == ["py-1"]
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    # One event log, one line for the event, whole.
    logged = lines(next((logs / "events").glob("events_*.log")))
    assert [e["type"] for e in logged] == ["risk_alert"]


def test_unsubscribe_and_publish_sync(run_script):
    p, logs = run_script(
        """
        import asyncio, json, threading
        from pm.events.bus import EventBus
        seen = []
        async def keep(event):
            seen.append(event.data['n'])
        async def main():
            bus = EventBus()
            bus.subscribe('job', keep)
            await bus.start()
            await bus.publish('job', {'n': 1})
            # From a thread, as code that is not async would.
            ids = []
            t = threading.Thread(target=lambda: ids.append(bus.publish_sync('job', {'n': 2})))
            t.start()
            t.join()
            for _ in range(500):
                if len(seen) == 2:
                    break
                await asyncio.sleep(0.01)
            removed = bus.unsubscribe('job', keep)
            again = bus.unsubscribe('job', keep)
            await bus.publish('job', {'n': 3})
            await bus.stop()
            print(json.dumps([sorted(seen), removed, again, bus.get_subscribers(), len(ids[0])]))
        asyncio.run(main())
        """
    )
    assert p.returncode == 0, p.stderr
    seen, removed, again, subs, id_len = json.loads(p.stdout)
    assert seen == [1, 2], "the third came after unsubscribe"
    assert (removed, again, subs) == (True, False, {})
    assert id_len == 36
    logged = lines(next((logs / "events").glob("events_*.log")))
    assert [e["data"]["n"] for e in logged] == [1, 2, 3]


def test_the_readme_python_example_runs_as_written(run_script):
    """The README's example, taken from the README itself: it makes its file, and
    the file change is handled and logged."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("## In Python"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[: code.index("```")]
    p, logs = run_script(code)
    assert p.returncode == 0, p.stderr
    logged = lines(logs / "file_changes" / "file_changes.jsonl")
    assert [l["status"] for l in logged] == ["ok"], logged
    assert logged[0]["file_path"] == "/tmp/test.txt"
