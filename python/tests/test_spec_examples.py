"""Every Python example of the specification, as written, on the Rust engine.

Each example is copied here verbatim (the ``SPEC_*`` strings) and run in a fresh
interpreter with only the scaffolding it assumes: a handler named
``my_handler``, an async function around examples that use ``await`` at the top
level, a receiver for the webhook URLs, a ``request`` for the incoming webhook.
Each test then checks what the example should have done.
"""

import hashlib
import hmac
import json
import textwrap

from conftest import SECRET, lines


def in_async_main(example, before="", after=""):
    """`example` (top-level awaits) run as the body of `async def main()`."""
    body = textwrap.indent(textwrap.dedent(example).strip("\n"), "    ")
    return f"import asyncio\n{textwrap.dedent(before)}\nasync def main():\n{body}\n{textwrap.indent(textwrap.dedent(after), '    ')}\nasyncio.run(main())\n"


SPEC_BASIC_USAGE = """
from pm.events.bus import EventBus, Event

# Create event bus
bus = EventBus()

# Subscribe to events
bus.subscribe('file_change', my_handler)

# Start processing
await bus.start()

# Publish events
await bus.publish('file_change', {'file_path': '/path/to/file'})

# Stop processing
await bus.stop()
"""


def test_basic_usage(run_script):
    p, logs = run_script(
        in_async_main(
            SPEC_BASIC_USAGE,
            before="""
            calls = []
            async def my_handler(event):
                calls.append((event.type, event.data))
            """,
            after="""
            print(json.dumps(calls))
            print(json.dumps(bus.get_subscribers()))
            """,
        ).replace("import asyncio\n", "import asyncio, json\n", 1)
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert json.loads(out[0]) == [["file_change", {"file_path": "/path/to/file"}]]
    assert json.loads(out[1]) == {"file_change": 1}
    (log,) = (logs / "events").glob("events_*.log")
    logged = lines(log)
    assert [(e["type"], e["data"]) for e in logged] == [("file_change", {"file_path": "/path/to/file"})]
    assert set(logged[0]) == {"type", "data", "timestamp", "event_id", "source"}


def test_event_structure(run_script):
    p, _ = run_script(
        """
        import json
        from pm.events.bus import Event
        e = Event('file_change', {'file_path': '/tmp/x'})
        print(json.dumps([type(e.type).__name__, type(e.data).__name__, type(e.timestamp).__name__,
                          type(e.event_id).__name__, type(e.source).__name__]))
        print(json.dumps(e.to_dict()))
        print(e.to_json())
        """
    )
    assert p.returncode == 0, p.stderr
    kinds, as_dict, as_json = p.stdout.splitlines()
    assert json.loads(kinds) == ["str", "dict", "float", "str", "str"]
    d = json.loads(as_dict)
    assert d["type"] == "file_change" and d["data"] == {"file_path": "/tmp/x"} and d["source"] == "personal-manager"
    assert json.loads(as_json) == d


SPEC_WEBHOOK_ENV = """
WEBHOOK_SIGNATURE_SECRET=your_secret_key
FILE_CHANGE_WEBHOOK_URL=https://your-service.com/webhooks/files
REPORT_READY_WEBHOOK_URL=https://your-service.com/webhooks/reports
CRITICAL_ALERT_WEBHOOK_URL=https://your-service.com/webhooks/critical
"""


def test_outgoing_webhooks_are_signed_in_the_specified_format(run_script, receiver, tmp_path):
    # The configuration example's variables, with the receiver's URLs.
    env = dict(line.split("=", 1) for line in SPEC_WEBHOOK_ENV.strip().splitlines())
    env = {k: v.replace("https://your-service.com", receiver.url) for k, v in env.items()}
    watched = tmp_path / "notes.txt"
    watched.write_text("notes")
    p, logs = run_script(
        f"""
        import asyncio
        from pm.events.bus import EventBus
        from pm.events.handlers import FileChangeHandler, RiskAlertHandler

        async def main():
            bus = EventBus()
            bus.subscribe('file_change', FileChangeHandler().handle_file_change)
            bus.subscribe('risk_alert', RiskAlertHandler().handle_risk_alert)
            await bus.start()
            await bus.publish('file_change', {{'file_path': {str(watched)!r}, 'change_type': 'modified', 'size': 5}})
            await bus.publish('risk_alert', {{'alert_id': 'a1', 'risk_type': 'security', 'severity': 'critical',
                                             'title': 'Leaked key', 'risk_score': 0.95}})
            await bus.stop()

        asyncio.run(main())
        """,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    got = receiver.wait_for(2)
    by_path = {r["path"]: r for r in got}
    assert set(by_path) == {"/webhooks/files", "/webhooks/critical"}
    for r in got:
        body = json.loads(r["body"])
        assert set(body) == {"event_type", "timestamp", "event_id", "data", "source", "signature"}
        # X-Webhook-Signature signs the exact bytes sent; the body's own member
        # signs the body without it (docs/webhooks.md).
        header = "sha256=" + hmac.new(b"your_secret_key", r["body"], hashlib.sha256).hexdigest()
        assert hmac.compare_digest(r["headers"]["x-webhook-signature"], header)
        member = "sha256=" + hmac.new(b"your_secret_key", _unsigned(r["body"]), hashlib.sha256).hexdigest()
        assert body["signature"] == member
    assert json.loads(by_path["/webhooks/files"]["body"])["data"]["file_path"] == str(watched)
    attempts = lines(logs / "webhooks" / "webhook_attempts.jsonl")
    assert sorted(a["status"] for a in attempts) == [200, 200], attempts


def _unsigned(raw):
    """The bytes the body's `signature` member signs: those before `,"signature":`, then `}`."""
    return raw[: raw.rindex(b',"signature":')] + b"}"


SPEC_INCOMING = """
webhook_handler = WebhookHandler()

# Process incoming webhook
success = await webhook_handler.handle_incoming_webhook(
    payload=request_body,
    signature=request.headers.get('X-Webhook-Signature'),
    headers=dict(request.headers)
)
"""


def test_incoming_webhooks_are_verified_and_published_on_the_global_bus(run_script):
    body = json.dumps({"event_type": "deployment", "data": {"service": "web"}}).encode()
    good = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    example = textwrap.indent(textwrap.dedent(SPEC_INCOMING).strip("\n"), "    ")
    script = f"""
import asyncio, json
from pm.events.bus import get_event_bus
from pm.events.handlers import WebhookHandler

class Request:
    def __init__(self, body, signature):
        self.body = body
        self.headers = {{'X-Webhook-Signature': signature, 'Content-Type': 'application/json'}}

received = []
async def on_deployment(event):
    received.append(event.data)

async def handle(request):
    request_body = request.body
{example}
    return success

async def main():
    bus = get_event_bus()
    bus.subscribe('deployment', on_deployment)
    await bus.start()
    results = [await handle(Request({body!r}, {good!r})), await handle(Request({body!r}, 'sha256=' + '0' * 64))]
    await bus.stop()
    print(json.dumps(results))
    print(json.dumps(received))

asyncio.run(main())
"""
    p, _ = run_script(script, env={"WEBHOOK_SIGNATURE_SECRET": SECRET})
    assert p.returncode == 0, p.stderr
    results, received = p.stdout.splitlines()
    assert json.loads(results) == [True, False]
    assert json.loads(received) == [{"service": "web"}], "published once, for the valid one only"


def test_metrics_subscriber_counts_and_log_file(run_script):
    p, logs = run_script(
        """
        import json
        from pm.events.bus import EventBus
        from pm.events.handlers import FileChangeHandler, ReportReadyHandler, RiskAlertHandler
        bus = EventBus()
        bus.subscribe('file_change', FileChangeHandler().handle_file_change)
        bus.subscribe('file_change', lambda e: None)
        bus.subscribe('report_ready', ReportReadyHandler().handle_report_ready)
        bus.subscribe('risk_alert', RiskAlertHandler().handle_risk_alert)

        # Get subscriber counts
        subscribers = bus.get_subscribers()
        # {'file_change': 2, 'report_ready': 1, 'risk_alert': 1}

        # Get log file location
        log_file = bus.get_log_file()
        print(json.dumps(subscribers))
        print(log_file)
        """
    )
    assert p.returncode == 0, p.stderr
    subs, log_file = p.stdout.splitlines()
    assert json.loads(subs) == {"file_change": 2, "report_ready": 1, "risk_alert": 1}
    assert log_file.endswith(".log") and "/events/events_" in log_file and log_file.startswith(str(logs))


SPEC_BASIC_INTEGRATION = """
import asyncio
from pm.events.bus import get_event_bus
from pm.events.handlers import FileChangeHandler

async def setup_events():
    # Get global event bus
    bus = get_event_bus()

    # Create and register handlers
    file_handler = FileChangeHandler()
    bus.subscribe('file_change', file_handler.handle_file_change)

    # Start processing
    await bus.start()

    # Publish an event
    await bus.publish('file_change', {
        'file_path': '/tmp/test.txt',
        'change_type': 'created',
        'size': 1024
    })

# Run the setup
asyncio.run(setup_events())
"""


def test_basic_integration_is_handled_before_the_interpreter_exits(run_script):
    # It publishes and ends without stop(): the event is still handled.
    p, logs = run_script(SPEC_BASIC_INTEGRATION)
    assert p.returncode == 0, p.stderr
    (line,) = lines(logs / "file_changes" / "file_changes.jsonl")
    assert line["file_path"] == "/tmp/test.txt" and line["change_type"] == "created"
    (event,) = lines(next((logs / "events").glob("events_*.log")))
    assert event["event_id"] == line["event_id"]


SPEC_CUSTOM_HANDLER = """
async def my_custom_handler(event):
    print(f"Received {event.type}: {event.data}")

    # Your custom processing logic here
    if event.type == 'file_change':
        # Handle file changes
        pass

# Subscribe to events
bus = get_event_bus()
bus.subscribe('file_change', my_custom_handler)
"""


def test_custom_event_handler(run_script):
    script = "import asyncio\nfrom pm.events.bus import get_event_bus\n" + textwrap.dedent(SPEC_CUSTOM_HANDLER) + textwrap.dedent(
        """
        async def main():
            await bus.start()
            await bus.publish('file_change', {'file_path': '/tmp/a.txt'})
            await bus.stop()
        asyncio.run(main())
        """
    )
    p, _ = run_script(script)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "Received file_change: {'file_path': '/tmp/a.txt'}"


SPEC_HANDLER_CONFIGURATION = """
# Customize handlers during initialization
file_handler = FileChangeHandler(log_changes=True)
report_handler = ReportReadyHandler(auto_distribute=False)
risk_handler = RiskAlertHandler(escalation_enabled=True)
webhook_handler = WebhookHandler(max_retries=5)
"""


def test_handler_configuration(run_script):
    p, _ = run_script(
        "from pm.events.handlers import FileChangeHandler, ReportReadyHandler, RiskAlertHandler, WebhookHandler\n"
        + textwrap.dedent(SPEC_HANDLER_CONFIGURATION)
        + "print(file_handler.log_changes, report_handler.auto_distribute, risk_handler.escalation_enabled, webhook_handler.max_retries)\n"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["True", "False", "True", "5"]


SPEC_CUSTOM_TYPES = """
# Define custom event handler
async def handle_deployment(event):
    data = event.data
    print(f"Deployment {data['status']}: {data['service']}")

# Register custom handler
bus.subscribe('deployment', handle_deployment)

# Publish custom event
await bus.publish('deployment', {
    'service': 'api-gateway',
    'status': 'success',
    'version': '1.2.3'
})
"""


def test_custom_event_types(run_script):
    p, logs = run_script(
        in_async_main(
            "bus = EventBus()\nawait bus.start()\n" + textwrap.dedent(SPEC_CUSTOM_TYPES) + "await bus.stop()\n",
            before="from pm.events.bus import EventBus",
        )
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "Deployment success: api-gateway"


SPEC_FILTERING = """
async def filtered_handler(event):
    # Only process high-priority events
    if event.data.get('priority') == 'high':
        await process_high_priority_event(event)

bus.subscribe('custom_event', filtered_handler)
"""


def test_event_filtering(run_script):
    p, _ = run_script(
        in_async_main(
            "bus = EventBus()\n"
            + textwrap.dedent(SPEC_FILTERING)
            + "await bus.start()\nfor prio in ['low', 'high', 'normal', 'high']:\n    await bus.publish('custom_event', {'priority': prio})\nawait bus.stop()\nprint(processed)\n",
            before="""
            from pm.events.bus import EventBus
            processed = []
            async def process_high_priority_event(event):
                await asyncio.sleep(0)
                processed.append(event.data['priority'])
            """,
        )
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "['high', 'high']"


SPEC_BATCH = """
# Process multiple events
events = [
    Event('file_change', {'file_path': '/tmp/file1.txt'}),
    Event('file_change', {'file_path': '/tmp/file2.txt'}),
    Event('file_change', {'file_path': '/tmp/file3.txt'})
]

for event in events:
    await bus.publish(event)
"""


def test_batch_event_processing(run_script):
    p, logs = run_script(
        in_async_main(
            "bus = EventBus()\nbus.subscribe('file_change', my_handler)\nawait bus.start()\n" + textwrap.dedent(SPEC_BATCH) + "await bus.stop()\nprint(sorted(seen) == sorted(e.event_id for e in events) and len(seen) == 3)\n",
            before="""
            from pm.events.bus import EventBus, Event
            seen = []
            async def my_handler(event):
                seen.append(event.event_id)
            """,
        )
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"
    logged = lines(next((logs / "events").glob("events_*.log")))
    assert [e["data"]["file_path"] for e in logged] == ["/tmp/file1.txt", "/tmp/file2.txt", "/tmp/file3.txt"]


SPEC_DEBUG = """
import logging

# Enable debug logging
logging.getLogger('pm.events').setLevel(logging.DEBUG)

# Check handler registrations
print(f"Registered handlers: {bus.get_subscribers()}")

# Monitor event queue
print(f"Queue size: {bus._event_queue.qsize()}")
"""


def test_debug_mode(run_script):
    p, _ = run_script(
        in_async_main(
            "bus = EventBus()\nbus.subscribe('file_change', my_handler)\n"
            + textwrap.dedent(SPEC_DEBUG)
            + "await bus.start()\nawait bus.publish('file_change', {'file_path': '/tmp/x'})\nawait bus.stop()\nprint('records', len(records))\n",
            before="""
            import logging
            from pm.events.bus import EventBus
            async def my_handler(event):
                pass
            records = []
            class Keep(logging.Handler):
                def emit(self, record):
                    records.append(record)
            logging.getLogger('pm.events').addHandler(Keep())
            """,
        )
    )
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[0] == "Registered handlers: {'file_change': 1}"
    assert out[1] == "Queue size: 0"
    # The engine's debug diagnostics reached logging under pm.events.
    assert int(out[2].split()[1]) > 0, p.stdout
