"""The one rule for a failed attempt (udop.errors.classify) and its Step Functions form."""

from __future__ import annotations

import pytest

from udop.aws.errors import for_state_machine
from udop.connectors.breaker import CircuitOpen
from udop.errors import (
    NOT_RETRIED,
    ConnectionFailed,
    DataQualityError,
    FatalError,
    InputError,
    RetryableError,
    TaskTimeout,
    classify,
)
from udop.sandbox import SandboxViolation
from udop.spec.models import RetryPolicy


@pytest.mark.parametrize(("exc", "name", "retryable"), [
    (ValueError("x"), "ValueError", True),  # user code: retried, as the docs say
    (RetryableError("x"), "udop.RetryableError", True),
    (TaskTimeout("x"), "udop.TaskTimeout", True),  # a subclass keeps its name
    (ConnectionFailed("x"), "udop.ConnectionFailed", True),
    (CircuitOpen("x"), "udop.ConnectionFailed", True),  # defined elsewhere: its public category
    (FatalError("x"), "udop.FatalError", False),
    (DataQualityError("x"), "udop.DataQualityError", False),
    (SandboxViolation("x"), "udop.FatalError", False),
    (InputError("x"), "udop.InputError", False),
    (KeyboardInterrupt(), "KeyboardInterrupt", False),
])
def test_every_failure_has_one_name_and_one_retry_decision(exc: BaseException, name: str,
                                                           retryable: bool) -> None:
    failure = classify(exc)
    assert (failure.name, failure.retryable) == (name, retryable)
    assert (name in NOT_RETRIED) == (name.startswith("udop.") and not retryable)


@pytest.mark.parametrize("exc", [ValueError("boom"), TaskTimeout("boom"), CircuitOpen("boom"),
                                 DataQualityError("boom"), SandboxViolation("boom")])
def test_the_task_runner_raises_the_name_the_local_executor_records(exc: BaseException) -> None:
    named = for_state_machine(exc)
    assert type(named).__name__ == classify(exc).name  # Lambda's errorType is the class name
    assert classify(named).retryable == classify(exc).retryable
    assert "boom" in str(named)


def test_retry_on_narrows_what_a_policy_retries_and_refuses_never_retried_names() -> None:
    policy = RetryPolicy(max_attempts=3, retry_on=("udop.ConnectionFailed",))
    assert policy.retries("udop.ConnectionFailed", True)
    assert not policy.retries("ValueError", True)
    assert RetryPolicy(max_attempts=3).retries("ValueError", True)
    with pytest.raises(ValueError, match="never retried"):
        RetryPolicy(retry_on=("udop.FatalError",))
    with pytest.raises(ValueError, match="not a udop or exception class name"):
        RetryPolicy(retry_on=("States.ALL",))
