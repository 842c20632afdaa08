"""Errors as the state machine sees them.

Lambda reports an exception's ``errorType`` as its class name. The compiled ``Retry``/``Catch``
name ``udop.RetryableError`` etc. (``udop.errors.error_type``), so the handler re-raises a subclass
of the original category whose class name is exactly that string.
"""

from __future__ import annotations

from functools import cache

from udop.errors import FatalError, RetryableError, TaskError, UdopError, error_type

__all__ = ["for_state_machine"]

@cache
def _named(name: str, base: type[BaseException]) -> type[BaseException]:
    return type(name, (base,), {"__module__": "udop.aws.errors"})


def state_machine_name(exc: BaseException) -> str:
    """``udop.RetryableError``, ``udop.DataQualityError``, ``udop.FatalError`` or a foreign class name.

    Subclasses (``ConnectionFailed``, ``TaskTimeout``, ``PayloadTooLarge``...) are folded into their
    category: ``ErrorEquals`` matches names exactly, without any notion of inheritance."""
    from udop.errors import DataQualityError

    if isinstance(exc, RetryableError):
        return "udop.RetryableError"
    if isinstance(exc, DataQualityError):
        return "udop.DataQualityError"
    if isinstance(exc, TaskError | UdopError):
        return "udop.FatalError"
    return error_type(exc)


def for_state_machine(exc: BaseException) -> BaseException:
    """An exception equal to ``exc`` in message whose class name the state machine matches on."""
    name = state_machine_name(exc)
    if type(exc).__name__ == name:
        return exc
    base = RetryableError if isinstance(exc, RetryableError) else (
        FatalError if isinstance(exc, UdopError) else Exception)
    message = str(exc) if type(exc).__name__ == name.removeprefix("udop.") else f"{type(exc).__name__}: {exc}"
    return _named(name, base)(message)
