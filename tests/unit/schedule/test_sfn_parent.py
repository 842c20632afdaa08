"""The parent state machine of a backfill on Step Functions: valid ASL (the npm asl-validator, as for
compiled pipelines), a Distributed Map over the dates file whose concurrency comes from the input,
one ``startExecution.sync:2`` per date named after the date's execution, a failed date caught so the
others go on, and the parent failing at the end when any date failed.

The parent runs for real on moto (with its ``startExecution.sync:2`` integration fixed for the test) in
tests/integration/aws/test_backfill_parent_on_stepfunctions.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from udop.schedule.sfn_parent import PARENT_SUFFIX, is_parent_machine, parent_definition, parent_machine_name

VALIDATOR = Path(__file__).resolve().parents[3] / "node_modules" / ".bin" / "asl-validator"


def test_the_parent_definition_is_valid_asl(tmp_path: Path) -> None:
    if not VALIDATOR.exists():
        pytest.skip(f"{VALIDATOR} is missing: run `npm ci` (scripts/bootstrap.sh does)")
    path = tmp_path / "parent.json"
    path.write_text(json.dumps(parent_definition()))
    proc = subprocess.run(
        [str(VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = parent_definition()
    broken["States"]["Check"]["Next"] = "Nowhere"
    path.write_text(json.dumps(broken))
    proc = subprocess.run(
        [str(VALIDATOR), "--json-path", str(path), "--silent"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode != 0  # the validator does catch a broken parent


def test_the_parent_fans_out_over_the_dates_with_the_backfills_concurrency() -> None:
    states = parent_definition()["States"]
    dates = states["Dates"]
    assert dates["Type"] == "Map"
    assert dates["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
    assert dates["MaxConcurrencyPath"] == "$.max_parallel"
    assert dates["ItemReader"]["Resource"] == "arn:aws:states:::s3:getObject"
    assert dates["ItemReader"]["Parameters"] == {"Bucket.$": "$.dates.bucket", "Key.$": "$.dates.key"}
    inner = dates["ItemProcessor"]["States"]
    run = inner["Run date"]
    assert run["Resource"] == "arn:aws:states:::states:startExecution.sync:2"
    assert run["Parameters"]["Name.$"] == "$.date.name"
    assert run["Parameters"]["StateMachineArn.$"] == "$.state_machine_arn"
    assert run["Parameters"]["Input"]["run.$"] == "States.JsonMerge($.run, $.date.run, false)"
    # a failed date is an outcome, not the end of the Map: the other dates go on
    assert run["Catch"] == [{"ErrorEquals": ["States.ALL"], "ResultPath": None, "Next": "Date failed"}]
    assert (inner["Date failed"]["Result"], inner["Date succeeded"]["Result"]) == ("failed", "succeeded")
    assert states["Check"]["Parameters"] == {"failed.$": "States.ArrayContains($.outcomes, 'failed')"}
    assert states["Some dates failed"]["Error"] == "udop.BackfillFailed"


def test_no_pipeline_machine_is_taken_for_a_parent() -> None:
    assert parent_machine_name("daily") == "udop-daily-Backfill"
    assert is_parent_machine("arn:aws:states:us-east-1:1:stateMachine:udop-daily-Backfill")
    # pipeline names are lower case: even one called "x-backfill" is a pipeline's machine
    assert not is_parent_machine("arn:aws:states:us-east-1:1:stateMachine:udop-x-backfill")
    assert PARENT_SUFFIX.lower() != PARENT_SUFFIX
