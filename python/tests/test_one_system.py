"""A Python process is the same system as the binary: what `pm-events` set up on a
log directory (managed endpoints, route variables, pending deliveries, NATS) is
delivered from Python too, through the library's one builder."""

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
import urllib.request

import pytest
import standardwebhooks

from conftest import SECRET, pm_events_binary




needs_binary = pytest.mark.skipif(pm_events_binary() is None, reason="the pm-events binary is not built (cargo build)")


def _env(logs, **more):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PM_", "WEBHOOK_")) and not k.endswith("_WEBHOOK_URL")}
    env.update({"PM_LOG_DIR": str(logs), "RUST_LOG": "warn", "WEBHOOK_SIGNATURE_SECRET": SECRET, "PM_ENDPOINT_ALLOW_NETS": "127.0.0.0/8"})
    env.update(more)
    return env


def _serve(env):
    """`pm-events serve` on a free port; returns the process and its URL."""
    p = subprocess.Popen([pm_events_binary(), "serve", "--bind", "127.0.0.1:0"], env=env, stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip().rsplit(" ", 1)[-1]


# Waits (with a deadline) until the attempt log shows a delivery answered 2xx.
WAIT_DELIVERED = """
import json, os, time
def delivered(timeout=30):
    path = os.path.join(os.environ['PM_LOG_DIR'], 'webhooks', 'webhook_attempts.jsonl')
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                if any(200 <= (json.loads(l).get('status') or 0) < 300 for l in f if l.strip()):
                    return True
        time.sleep(0.05)
    return False
"""


def with_wait(code):
    """`code` (dedented) after the `delivered()` helper."""
    return WAIT_DELIVERED + textwrap.dedent(code)


@needs_binary
def test_python_delivers_to_a_managed_endpoint_added_by_the_cli(run_script, receiver, tmp_path):
    logs = tmp_path / "logs"
    added = subprocess.run(
        [pm_events_binary(), "endpoints", "add", f"{receiver.url}/managed", "--types", "deployment", "--secret-env", "WEBHOOK_SIGNATURE_SECRET"],
        env=_env(logs), capture_output=True, text=True,
    )
    assert added.returncode == 0, added.stderr
    p, _ = run_script(
        with_wait("""
        import asyncio
        from pm.events.bus import EventBus
        async def main():
            bus = EventBus()
            assert bus.get_subscribers() == {}, bus.get_subscribers()
            await bus.start()
            await bus.publish('deployment', {'service': 'api', 'status': 'success'})
            await bus.stop()
            assert delivered(), 'not delivered'
        asyncio.run(main())
        """),
        env={"WEBHOOK_SIGNATURE_SECRET": SECRET, "PM_ENDPOINT_ALLOW_NETS": "127.0.0.0/8"},
    )
    assert p.returncode == 0, p.stderr
    [r] = receiver.wait_for(1)
    assert r["path"] == "/managed"
    # The endpoint's own secret signs it; the independent library agrees.
    payload = standardwebhooks.Webhook(SECRET).verify(r["body"], r["headers"])
    assert payload["event_type"] == "deployment" and payload["data"]["service"] == "api"


@needs_binary
def test_a_python_bus_delivers_a_delivery_left_pending_by_a_killed_process(run_script, receiver, tmp_path):
    logs = tmp_path / "logs"
    receiver.status = 503  # the first attempt fails: the delivery waits in the outbox for a retry
    env = _env(logs, PM_WEBHOOK_URL_DEPLOYMENT=f"{receiver.url}/deploy")
    serve, url = _serve(env)
    try:
        req = urllib.request.Request(f"{url}/events", data=json.dumps({"type": "deployment", "data": {"n": 1}}).encode(),
                                     headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req) as r:
            event_id = json.load(r)["event_id"]
        receiver.answered(503)
    finally:
        serve.send_signal(signal.SIGKILL)
        serve.wait(timeout=30)
    receiver.status = 200
    p, _ = run_script(
        with_wait("""
        import asyncio
        from pm.events.bus import EventBus
        async def main():
            bus = EventBus()
            await bus.start()
            assert delivered(), 'the pending delivery was not resumed'
            await bus.stop()
        asyncio.run(main())
        """),
        env={"WEBHOOK_SIGNATURE_SECRET": SECRET, "PM_WEBHOOK_URL_DEPLOYMENT": f"{receiver.url}/deploy"},
    )
    assert p.returncode == 0, p.stderr
    ok = [r for r in receiver.requests if r["status"] == 200]
    assert [json.loads(r["body"])["event_id"] for r in ok] == [event_id]


def test_the_handler_configuration_trigger_is_delivered(run_script, receiver):
    p, logs = run_script(
        with_wait("""
        import asyncio
        from pm.events.bus import Event
        from pm.events.handlers import WebhookHandler
        async def main():
            webhook_handler = WebhookHandler(max_retries=5)
            delivery = await webhook_handler.handle_webhook_trigger(Event('deployment', {'service': 'api'}))
            print(delivery)
            assert delivered(), 'the triggered delivery was never attempted'
        asyncio.run(main())
        """),
        env={"WEBHOOK_SIGNATURE_SECRET": SECRET, "PM_WEBHOOK_URL_DEPLOYMENT": f"{receiver.url}/deploy"},
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip()  # a delivery id
    [r] = receiver.wait_for(1)
    assert json.loads(r["body"])["data"] == {"service": "api"}


def test_subscribe_star_receives_every_type(run_script):
    p, _ = run_script(
        """
        import asyncio
        from pm.events.bus import EventBus
        seen = []
        async def main():
            bus = EventBus()
            bus.subscribe('*', lambda e: seen.append(e.type))
            assert bus.get_subscribers() == {'*': 1}, bus.get_subscribers()
            await bus.start()
            for t in ('deployment', 'file_change', 'custom.thing'):
                await bus.publish(t, {})
            await bus.stop()
            print(sorted(seen))
        asyncio.run(main())
        """
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['custom.thing', 'deployment', 'file_change']"


@pytest.fixture
def nats_url(tmp_path):
    """A real nats-server with JetStream on a free port in a temporary directory."""
    exe = os.environ.get("PM_TEST_NATS_SERVER") or shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not os.path.exists(exe):
        pytest.skip("nats-server is not installed (scripts/test.sh installs it)")
    d = tmp_path / "nats"
    d.mkdir()
    p = subprocess.Popen([exe, "-js", "-a", "127.0.0.1", "-p", "-1", "-sd", str(d), "--ports_file_dir", str(d)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        url = None
        while url is None and time.time() < deadline:
            for f in d.glob(f"*_{p.pid}.ports"):
                try:
                    url = json.loads(f.read_text())["nats"][0]
                except (ValueError, KeyError):
                    pass
            time.sleep(0.02)
        assert url, "nats-server did not start"
        yield url
    finally:
        p.kill()
        p.wait()


@needs_binary
def test_a_python_bus_on_nats_has_its_event_delivered_by_a_serve_node(run_script, receiver, tmp_path, nats_url):
    serve, url = _serve(_env(tmp_path / "node", PM_NATS_URL=nats_url))
    try:
        req = urllib.request.Request(f"{url}/api/v1/endpoints", data=json.dumps(
            {"url": f"{receiver.url}/cluster", "event_types": ["deployment"], "secret": SECRET}).encode(),
            headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(req) as r:
            assert r.status == 201
        p, _ = run_script(
            """
            import asyncio
            from pm.events.bus import EventBus
            async def main():
                bus = EventBus()
                await bus.start()
                print(await bus.publish('deployment', {'service': 'from-python'}))
                await bus.stop()
            asyncio.run(main())
            """,
            env={"PM_NATS_URL": nats_url, "WEBHOOK_SIGNATURE_SECRET": SECRET, "PM_ENDPOINT_ALLOW_NETS": "127.0.0.0/8"},
        )
        assert p.returncode == 0, p.stderr
        event_id = p.stdout.strip()
        [r] = receiver.wait_for(1, timeout=30)
        payload = standardwebhooks.Webhook(SECRET).verify(r["body"], r["headers"])
        assert payload["event_id"] == event_id and payload["data"] == {"service": "from-python"}
        # The serve node sent it (the Python process only queues deliveries).
        deadline = time.time() + 20
        while True:
            with urllib.request.urlopen(f"{url}/api/v1/deliveries?event_id={event_id}") as resp:
                rows = json.load(resp)["data"]
            if (rows and rows[0]["status"] == "delivered") or time.time() > deadline:
                break
            time.sleep(0.05)
        assert rows and rows[0]["status"] == "delivered", rows
    finally:
        serve.terminate()
        serve.wait(timeout=30)
