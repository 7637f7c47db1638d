"""The event bus: ``EventBus``, ``Event`` and the process-wide ``get_event_bus()``."""

from pm.events._native import Event, EventBus, get_event_bus

__all__ = ["Event", "EventBus", "get_event_bus"]
