"""Observability: one logging setup, per-attempt task logs, metrics hooks and optional tracing.

Import-light on purpose: the CLI, the server and the Lambda handlers all import it, and tracing's
SDK is imported only when a collector is configured (``udop.observability.tracing``).
"""

from udop.observability.context import LogContext, bound, correlation_id, current, new_correlation_id

__all__ = ["LogContext", "bound", "correlation_id", "current", "new_correlation_id"]
