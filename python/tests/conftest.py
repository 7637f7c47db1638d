"""Test kit: run a script in a fresh interpreter (its own environment, its own
global bus), and a real HTTP receiver on 127.0.0.1 that records requests."""

import http.server
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def pm_events_binary():
    """The built `pm-events` (PM_EVENTS_BIN, the PATH, or target/debug), or None."""
    found = os.environ.get("PM_EVENTS_BIN") or shutil.which("pm-events")
    if found:
        return found
    built = Path(__file__).resolve().parents[2] / "target" / "debug" / "pm-events"
    return str(built) if built.exists() else None


class Receiver:
    """An HTTP server on a free loopback port; every POST is recorded and answered 200."""

    def __init__(self):
        self.requests = []
        # The status every POST is answered with (a test may make it fail first).
        self.status = 200
        self._cond = threading.Condition()
        outer = self

        class Handle(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer._cond:
                    status = outer.status
                    outer.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "status": status})
                    outer._cond.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handle)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, n, timeout=20.0):
        with self._cond:
            self._cond.wait_for(lambda: len(self.requests) >= n, timeout)
            return list(self.requests)

    def answered(self, status, timeout=30.0):
        """The requests, once one was answered `status` (or the timeout passed)."""
        with self._cond:
            self._cond.wait_for(lambda: any(r["status"] == status for r in self.requests), timeout)
            return list(self.requests)

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def run_script(tmp_path):
    """Runs `code` in a new interpreter with PM_LOG_DIR=<tmp>/logs and `env`;
    returns (completed process, log dir)."""

    def run(code, env=None, timeout=60):
        logs = tmp_path / "logs"
        e = {k: v for k, v in os.environ.items() if not k.startswith(("PM_", "WEBHOOK_")) and not k.endswith("_WEBHOOK_URL")}
        e["PM_LOG_DIR"] = str(logs)
        e.update(env or {})
        script = tmp_path / "script.py"
        script.write_text(textwrap.dedent(code))
        p = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=timeout)
        return p, logs

    return run


def lines(path):
    """The JSON lines of a file."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
