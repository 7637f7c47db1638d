"""The Personal Manager event system: an asyncio event bus with a durable
JSON Lines log and signed webhooks, running on the pm-events Rust engine.

    from pm.events.bus import EventBus, Event, get_event_bus
    from pm.events.handlers import FileChangeHandler, ReportReadyHandler, RiskAlertHandler, WebhookHandler

Diagnostics go to the ``logging`` logger ``pm.events``.
"""

import atexit as _atexit
import logging as _logging

from pm.events._native import (
    BusNotRunning,
    ConfigError,
    Event,
    EventBus,
    InvalidEventError,
    LogError,
    PmEventsError,
    QueueFull,
    _stop_all,
    get_event_bus,
)

_logging.getLogger("pm.events").addHandler(_logging.NullHandler())

# A script that publishes and ends without `stop()` still has its events
# handled: every running bus is stopped (drained) at interpreter exit.
_atexit.register(_stop_all)

__all__ = [
    "BusNotRunning",
    "ConfigError",
    "Event",
    "EventBus",
    "InvalidEventError",
    "LogError",
    "PmEventsError",
    "QueueFull",
    "get_event_bus",
]
