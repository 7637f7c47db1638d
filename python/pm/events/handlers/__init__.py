"""The built-in handlers, configured from the environment as the binary is."""

from pm.events._native import FileChangeHandler, ReportReadyHandler, RiskAlertHandler, WebhookHandler

__all__ = ["FileChangeHandler", "ReportReadyHandler", "RiskAlertHandler", "WebhookHandler"]
