"""pm.events on the Rust engine beside the specification's plain-asyncio design.

Same workload for both, in the same process: one no-op ``async def`` handler,
``await bus.publish(...)`` one at a time, the event log on (one JSON line per
event in ``<dir>/events/events_YYYYMMDD.log``), then ``stop()`` once every event
is handled. Prints events/s of each and the ratio.

    python python/bench/bench_bus.py [--events 100000] [--rounds 3]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Callable, Dict, List


# ---- the specification's design, in plain asyncio -------------------------


@dataclass
class PlainEvent:
    type: str
    data: Dict[str, Any]
    timestamp: float = field(default_factory=time.time)
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    source: str = "personal-manager"

    def to_dict(self):
        return asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict())


class PlainEventBus:
    """An asyncio.Queue, a processor task, and a JSON Lines log written per event."""

    def __init__(self, log_dir: str):
        self._subscribers: Dict[str, List[Callable]] = {}
        self._event_queue: asyncio.Queue = asyncio.Queue()
        self._running = False
        self._task = None
        os.makedirs(os.path.join(log_dir, "events"), exist_ok=True)
        name = f"events_{datetime.now().strftime('%Y%m%d')}.log"
        self._log = open(os.path.join(log_dir, "events", name), "a", encoding="utf-8")

    def subscribe(self, event_type: str, handler: Callable):
        self._subscribers.setdefault(event_type, []).append(handler)

    async def publish(self, event, data=None):
        if isinstance(event, str):
            event = PlainEvent(event, data or {})
        self._log.write(event.to_json() + "\n")
        self._log.flush()
        await self._event_queue.put(event)

    async def start(self):
        self._running = True
        self._task = asyncio.create_task(self._process())

    async def stop(self):
        await self._event_queue.join()
        self._running = False
        self._task.cancel()
        self._log.close()

    async def _process(self):
        while self._running:
            event = await self._event_queue.get()
            for handler in self._subscribers.get(event.type, []):
                try:
                    await handler(event)
                except Exception:
                    pass
            self._event_queue.task_done()


# ---- the run ---------------------------------------------------------------


async def noop(event):
    return None


async def run(make_bus, n: int) -> float:
    bus = make_bus()
    bus.subscribe("bench", noop)
    await bus.start()
    data = {"n": 1}
    started = time.perf_counter()
    for _ in range(n):
        await bus.publish("bench", data)
    await bus.stop()
    return n / (time.perf_counter() - started)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()

    from pm.events.bus import EventBus

    plain, engine = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            plain_dir = os.path.join(tmp, f"plain{r}")
            engine_dir = os.path.join(tmp, f"engine{r}")
            plain.append(asyncio.run(run(lambda: PlainEventBus(plain_dir), a.events)))
            os.environ["PM_LOG_DIR"] = engine_dir
            engine.append(asyncio.run(run(EventBus, a.events)))
            print(
                f"round {r + 1}: plain asyncio {plain[-1]:,.0f} events/s, "
                f"pm.events {engine[-1]:,.0f} events/s, ratio {engine[-1] / plain[-1]:.2f}"
            )
    p_med, e_med = statistics.median(plain), statistics.median(engine)
    print(
        f"median of {a.rounds}: plain asyncio {p_med:,.0f} events/s, pm.events {e_med:,.0f} events/s, "
        f"ratio {e_med / p_med:.2f} (target >= 2.00)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
