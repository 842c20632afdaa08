"""The udop exception tree, documented in one place.

Two families matter outside the library:

* ``SpecError`` and friends: the user's input is wrong. The CLI prints ``str(err)`` (one line
  naming the file and the place in it) and exits 2. Nothing has run.
* ``TaskError`` and its subclasses: raised while a task runs.

Every executor decides what a failed attempt means with one function, :func:`classify`: its
stable error name (``udop.<Class>`` for the classes defined here, the nearest of them for a udop
subclass defined elsewhere, the class name for anything else) and whether another attempt may
help. The rule: ``FatalError`` and ``InputError`` (and their subclasses) are never retried;
everything else is, foreign exceptions from user code included (a ``ValueError`` is retried). A
retry policy's ``retry_on`` narrows that to the names it lists. The LocalExecutor records these
names, the task runner raises them as Lambda ``errorType`` and the compiler derives the compiled
``Retry`` from the same classes (:data:`NOT_RETRIED`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "NOT_RETRIED",
    "RETRIED",
    "STATES_ALIASES",
    "ConfigError",
    "ConnectionFailed",
    "DataQualityError",
    "Failure",
    "FatalError",
    "InputError",
    "PayloadTooLarge",
    "ReportedFailure",
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
    "classify",
    "error_name",
    "error_type",
    "is_retryable",
    "recorded_name",
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


def _public(kind: type[BaseException]) -> type[BaseException]:
    """The nearest class of ``kind``'s ancestry defined in this module (udop subclasses elsewhere,
    such as ``SandboxViolation``, are reported under the public name of their category)."""
    for base in kind.__mro__:
        if base.__module__ == __name__:
            return base
    return kind


def error_name(exc: BaseException | type[BaseException]) -> str:
    """The stable name the metadata store, the task runner's ``errorType`` and the compiled
    ``Retry``/``Catch`` use: ``udop.TaskTimeout``, ``udop.FatalError``..., or a foreign class name
    (``ValueError``). ``ErrorEquals`` matches names exactly, so a subclass keeps its own name
    (``udop.ConnectionFailed`` is not folded into ``udop.RetryableError``)."""
    kind = exc if isinstance(exc, type) else type(exc)
    if issubclass(kind, UdopError):
        return f"udop.{_public(kind).__name__}"
    return kind.__name__


def is_retryable(exc: BaseException | type[BaseException]) -> bool:
    """Whether another attempt may help: not for ``FatalError``/``InputError`` (an unknown connector,
    bad data), nor for an interrupt; yes for everything else, a foreign exception included."""
    kind = exc if isinstance(exc, type) else type(exc)
    if not issubclass(kind, Exception):
        return False  # KeyboardInterrupt, SystemExit
    return not issubclass(kind, FatalError | InputError)


@dataclass(frozen=True, slots=True)
class Failure:
    """What a failed attempt means, the same on every executor."""

    name: str
    retryable: bool
    message: str



class ReportedFailure(Exception):
    """A failure classified in another process (a Celery worker) and reported by name: ``classify``
    gives back what was decided there. ``checks`` are the check results a ``DataQualityError`` carried."""

    def __init__(self, failure: Failure, checks: tuple[Any, ...] = ()) -> None:
        super().__init__(failure.message)
        self.failure = failure
        self.checks = checks


def classify(exc: BaseException) -> Failure:
    """The one rule for a failed attempt (see the module docstring)."""
    if isinstance(exc, ReportedFailure):
        return exc.failure
    message = (str(exc).strip() or type(exc).__name__)[:4000]
    return Failure(name=error_name(exc), retryable=is_retryable(exc), message=message)


def _public_classes() -> list[type[UdopError]]:
    found: list[type[UdopError]] = []
    pending: list[type[UdopError]] = [UdopError]
    while pending:
        kind = pending.pop(0)
        if kind.__module__ == __name__ and kind not in found:
            found.append(kind)
        pending.extend(kind.__subclasses__())
    return found


#: the udop error names no retry policy retries; the compiled ``Retry`` lists them first with
#: ``MaxAttempts: 0`` so that the catch-all rule after them retries everything else, as locally
NOT_RETRIED: tuple[str, ...] = tuple(sorted(error_name(k) for k in _public_classes() if not is_retryable(k)))
#: the udop error names that are retried (any foreign name is too)
RETRIED: tuple[str, ...] = tuple(sorted(error_name(k) for k in _public_classes() if is_retryable(k)))


#: Step Functions' own name for the same failure: a Task state's ``TimeoutSeconds`` ending an attempt
#: is a ``udop.TaskTimeout`` (compiled ``retry_on`` lists both; run records show the udop name)
STATES_ALIASES: dict[str, str] = {"udop.TaskTimeout": "States.Timeout"}


def recorded_name(name: str | None) -> str | None:
    """The name a run record keeps for an error name the state machine reported."""
    for ours, theirs in STATES_ALIASES.items():
        if name == theirs:
            return ours
    return name


def error_type(exc: BaseException) -> str:
    """Alias of :func:`error_name`, kept for callers written before it."""
    return error_name(exc)
