"""Task logs and traces on emulated AWS (moto, Step Functions executing, our real handlers).

User code's log lines and printed output inside the task runner come out as JSON lines with the run's
ids and the Lambda request id; each attempt's record in the metadata store points at its CloudWatch
log group/stream/request; the W3C traceparent of the run's span reaches every attempt through the
execution input."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from udop.observability import tracing
from udop.states import TaskState

pytestmark = [pytest.mark.aws, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.reset()


def _deployed_chatty(aws: Any, store: Any, tmp_path: Path) -> Path:
    from udop.aws.runs import deploy_file

    path = tmp_path / "chatter.yaml"
    path.write_text(textwrap.dedent(f"""\
        apiVersion: udop/v1
        kind: Pipeline
        metadata: {{name: chatter}}
        spec:
          tasks:
            - {{id: talk, type: python, callable: "udop_aws_test_tasks:chatty",
               retry: {{max_attempts: 2, base_delay: 1s, max_delay: 1s}},
               args: {{message: "hello-aws", fail_times: 1, log_dir: "{aws.log_root}"}}}}
            - {{id: after, type: python, callable: "udop_aws_test_tasks:chatty", depends_on: [talk],
               args: {{message: "second", log_dir: "{aws.log_root}"}}}}
        """))
    result = deploy_file(str(path), definitions_bucket=aws.definitions_bucket,
                         task_runner_arn=aws.task_runner_arn, role_arn=aws.role_arn, store=store,
                         s3=aws.client("s3"), sfn=aws.client("stepfunctions"))
    assert result.ok, result.errors
    return path


def test_user_lines_are_json_with_ids_and_attempts_point_at_cloudwatch_and_join_the_trace(
    moto_aws: Any, store: Any, tmp_path: Path, spans: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    from aws_support import load_event

    from udop.aws.runs import start_run
    from udop.observability.context import bound
    from udop.observability.tasklogs import describe, render_log
    from udop.spec.loader import load_pipeline

    path = _deployed_chatty(moto_aws, store, tmp_path)
    sfn = moto_aws.client("stepfunctions")
    with bound(correlation_id="cid-logs-aws"):
        run_id, arn, sm_arn = start_run(load_pipeline(str(path)), {}, store=store, sfn=sfn)
    assert moto_aws.wait_execution(arn)["status"] == "SUCCEEDED"

    # 1. the task's own lines, as the function's stdout has them: JSON with the run's ids
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    user = [x for x in lines if x.get("logger") == "user.code"]
    printed = [x for x in lines if x.get("logger") == "task.stdout"]
    assert [x["message"] for x in user] == ["hello-aws from talk call 1", "hello-aws from talk call 2",
                                            "second from after call 1"]
    assert [x["message"] for x in printed] == ["printed hello-aws call 1", "printed hello-aws call 2",
                                               "printed second call 1"]
    for line in user + printed:
        assert line["run_id"] == run_id and line["pipeline"] == "chatter"
        assert line["correlation_id"] == "cid-logs-aws" and line["request_id"]
    assert [(x["task_id"], x["attempt"]) for x in user] == [("talk", 1), ("talk", 2), ("after", 1)]

    # 2. the run-events function records each attempt with a pointer to its CloudWatch lines
    event = load_event("sfn_execution_status_change.json", execution_arn=arn, state_machine_arn=sm_arn,
                       name=run_id, status="SUCCEEDED", account=sm_arn.split(":")[4])
    resp = moto_aws.client("lambda").invoke(FunctionName=moto_aws.run_events_arn, Payload=json.dumps(event))
    assert resp.get("FunctionError") is None, resp["Payload"].read()
    run = store.get_run(run_id)
    talk = next(t for t in run.tasks if t.task_id == "talk")
    assert talk.state == TaskState.SUCCEEDED and len(talk.attempts) == 2
    pointers = [a.log for a in talk.attempts]
    request_ids = [x["request_id"] for x in user[:2]]
    for log, request_id in zip(pointers, request_ids, strict=True):
        assert log is not None and log["kind"] == "cloudwatch"
        assert log["log_group"].startswith("/aws/lambda/") and log["log_stream"]
        assert log["request_id"] == request_id  # the attempt's own invocation, not its neighbour's
        assert request_id in describe(log)

    # `udop logs` / the API read the invocation's lines from the stream (here: what we put there)
    logs = moto_aws.client("logs")
    first = pointers[0]
    assert first is not None
    logs.create_log_stream(logGroupName=first["log_group"], logStreamName=first["log_stream"])
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName=first["log_group"], logStreamName=first["log_stream"], logEvents=[
        {"timestamp": now, "message": json.dumps(user[0])},
        {"timestamp": now + 1, "message": json.dumps({"message": "other", "request_id": "someone-else"})}])
    text = render_log(first)
    assert "hello-aws from talk call 1" in text and "someone-else" not in text

    # 3. one trace: the run's span (start_run) is the parent of every attempt's span in the runner
    finished = spans.get_finished_spans()
    root = next(s for s in finished if s.name == "run chatter")
    attempts = sorted(s.name for s in finished if s.name.startswith("attempt "))
    assert attempts == ["attempt after#1", "attempt talk#1", "attempt talk#2"]
    for span in finished:
        if span.name.startswith("attempt "):
            assert span.context.trace_id == root.context.trace_id
            assert span.parent is not None and span.parent.span_id == root.context.span_id
