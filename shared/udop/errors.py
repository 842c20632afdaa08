"""The udop exception tree, documented in one place.

Two families matter outside the library:

* ``SpecError`` and friends: the user's input is wrong. The CLI prints ``str(err)`` (one line
  naming the file and the place in it) and exits 2. Nothing has run.
* ``TaskError`` and its subclasses: raised while a task runs. Their *class names* are part of the
  contract with the compiled Step Functions definition: ``Retry`` names ``udop.RetryableError``
  and ``Catch`` names ``States.ALL``; the task runner reports ``errorType`` as
  ``error_type(exc)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "ConfigError",
    "ConnectionFailed",
    "DataQualityError",
    "FatalError",
    "InputError",
    "PayloadTooLarge",
    "RetryableError",
    "RunLimitReached",
    "RunNotFound",
    "SpecError",
    "SpecErrors",
    "StoreError",
    "TaskError",
    "TaskTimeout",
    "TransitionError",
    "UdopError",
    "error_type",
]


class UdopError(Exception):
    """Base of every error udop raises on purpose."""

    #: process exit code the CLI uses when this error reaches it
    exit_code: int = 1


class InputError(UdopError):
    """Invalid input or usage: the CLI exits 2 and nothing ran."""

    exit_code = 2


class SpecError(InputError):
    """One problem in a pipeline definition, located by file, line and path.

    ``str()`` is the one-line form the CLI prints:
    ``pipeline.yaml:12: spec.tasks[2].depends_on[0]: unknown task 'x'``.
    """

    def __init__(
        self, message: str, *, file: str | None = None, path: str | None = None, line: int | None = None
    ) -> None:
        self.message = message
        self.file = file
        self.path = path
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.path:
            where.append(self.path)
        return ": ".join([*where, self.message])

    def located(self, file: str | None, line: int | None = None) -> SpecError:
        return SpecError(self.message, file=self.file or file, path=self.path, line=self.line or line)


class SpecErrors(InputError):
    """Several ``SpecError`` found in one definition; ``str()`` is one line per error."""

    def __init__(self, errors: Sequence[SpecError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    @classmethod
    def collect(cls, errors: Iterable[SpecError]) -> None:
        """Raise when ``errors`` is not empty."""
        found = list(errors)
        if found:
            raise cls(found)


class ConfigError(InputError):
    """A setting (environment variable, CLI option, connection) is missing or malformed."""


class RunNotFound(InputError):
    """No run with that id in the metadata store."""


class RunLimitReached(UdopError):
    """The pipeline already has ``max_active_runs`` runs in progress; the CLI exits 3."""

    exit_code = 3


class StoreError(UdopError):
    """The metadata or state store failed (database unreachable, migration needed, ...)."""


class TransitionError(UdopError):
    """An illegal run, task or attempt state change was asked for: a bug or a concurrent writer."""


class TaskError(UdopError):
    """Raised by task code. Subclasses decide whether a retry can help."""


class RetryableError(TaskError):
    """A transient failure: the executor (or the state machine's ``Retry``) tries again."""


class TaskTimeout(RetryableError):
    """The task ran longer than its ``timeout``."""


class ConnectionFailed(RetryableError):
    """A source or target could not be reached; the message names the connection, never a secret."""


class FatalError(TaskError):
    """A failure that another attempt cannot fix (bad data, a missing column, a wrong password)."""


class DataQualityError(FatalError):
    """A ``validate`` rule of severity ``error`` failed; nothing downstream may load the data."""


class PayloadTooLarge(FatalError):
    """A value meant to travel between tasks is over the size that may travel by value."""


def error_type(exc: BaseException) -> str:
    """The name the state machine and the metadata store use for an exception.

    udop's own task errors are prefixed ``udop.`` so that ``Retry``/``Catch`` ``ErrorEquals`` can name
    them without colliding with ``States.*`` or ``Lambda.*`` names. Anything else is reported by its
    class name: an unexpected exception is not retried by the compiled definition unless the task's
    retry policy says ``retry_on: any``.
    """
    if isinstance(exc, UdopError):
        return f"udop.{type(exc).__name__}"
    return type(exc).__name__
