"""The task runner's own EMF metric lines reach the function's stdout whole, even inside an attempt whose
printed output is masked (on a server: the PII detectors, whose card rule matches 13 digits)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from udop.aws.observability import emit_metric
from udop.aws.tasklogs import attempt_logging
from udop.redaction import redactor


def test_a_metric_emitted_inside_a_masked_attempt_is_one_valid_emf_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    event: dict[str, Any] = {"pipeline": "p", "task_id": "t", "run": {"run_id": "r1"}, "attempt": 0}
    # a masking pattern of the pipeline, active for the attempt: any run of 13 digits, as an epoch-ms
    # timestamp is (the PII card rule matched those that pass its checksum)
    with attempt_logging(event), redactor.scope([r"\d{13}"]):
        print("card 4111111111111111 paid")  # the task's own output: masked
        emit_metric("udop_rows_written", "Count", 10, {"pipeline": "p"})
    out = capsys.readouterr().out
    assert "4111111111111111" not in out
    [line] = [line for line in out.splitlines() if "_aws" in line]
    blob = json.loads(line)
    assert isinstance(blob["_aws"]["Timestamp"], int) and blob["_aws"]["Timestamp"] > 10**12
    assert blob["udop_rows_written"] == [10.0] and blob["pipeline"] == "p"
    assert blob["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "udop_rows_written", "Unit": "Count"}]
