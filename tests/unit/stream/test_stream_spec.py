"""The stream trigger in a definition: what it turns into, and the one-line errors of a wrong one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from udop.spec.loader import load_pipeline


def _write(
    tmp_path: Path,
    stream: dict[str, Any],
    tasks: list[dict[str, Any]] | None = None,
    connections: dict[str, Any] | None = None,
) -> Path:
    doc = {
        "apiVersion": "udop/v1",
        "kind": "Pipeline",
        "metadata": {"name": "orders-stream"},
        "spec": {
            "connections": connections
            if connections is not None
            else {"bus": {"connector": "kafka", "bootstrap_servers": "127.0.0.1:1"}},
            "trigger": {"stream": stream},
            "tasks": tasks
            if tasks is not None
            else [
                {
                    "id": "clean",
                    "type": "transform",
                    "depends_on": ["orders"],
                    "steps": [{"filter": "amount > 0"}],
                },
                {
                    "id": "land",
                    "type": "load",
                    "depends_on": ["clean"],
                    "target": {"connector": "parquet", "path": "out", "mode": "append"},
                },
            ],
        },
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_the_stream_stands_in_for_an_extract_task_of_its_id(tmp_path: Path) -> None:
    pipeline = load_pipeline(
        _write(
            tmp_path,
            {"source": {"connection": "bus", "topic": "orders"}, "id": "orders", "max_batch_rows": 500},
        )
    )
    stream = pipeline.stream
    assert stream is not None and stream.max_batch_rows == 500 and stream.max_batch_seconds == 5.0
    task = pipeline.task("orders")
    assert task.type == "extract"
    assert task.source.connector == "kafka"  # from the connection
    assert task.source.connection == "bus" and task.source.model_extra == {"topic": "orders"}
    # the definition stored with a run (the stand-in included) loads back to the same pipeline
    from udop.spec.models import Pipeline
    from udop.spec.secure import stored_definition

    again = Pipeline.model_validate(stored_definition(pipeline))
    assert [t.id for t in again.spec.tasks] == [t.id for t in pipeline.spec.tasks]


@pytest.mark.parametrize(
    ("stream", "tasks", "expected"),
    [
        (
            {"source": {"connection": "nope", "topic": "t"}, "id": "orders"},
            None,
            "trigger.stream.source.connection 'nope' is not in spec.connections (bus)",
        ),
        ({"source": {"topic": "t"}, "id": "orders"}, None, "a stream source needs 'connection'"),
        (
            {"source": {"connection": "bus"}, "id": "clean"},
            None,
            "trigger.stream.id 'clean' is a transform task",
        ),
        ({"source": {"connection": "bus"}, "id": "orders", "max_batch_rows": 0}, None, "max_batch_rows"),
        (
            {"source": {"connection": "bus"}, "id": "orders", "dead_letter": {"after": 2}},
            None,
            "spec.trigger.stream.dead_letter: missing required key 'target'",
        ),
        ({"source": {"connection": "bus"}, "id": "events"}, None, "unknown task 'orders'"),
    ],
)
def test_a_wrong_stream_trigger_is_one_line_naming_the_file(
    tmp_path: Path, cli: Any, stream: dict[str, Any], tasks: Any, expected: str
) -> None:
    path = _write(tmp_path, stream, tasks)
    code, _out, err = cli("validate", str(path))
    assert code != 0
    assert expected in err, err
    assert str(path) in err and "Traceback" not in err


def test_udop_run_sends_a_stream_pipeline_to_udop_stream(tmp_path: Path, cli: Any) -> None:
    path = _write(tmp_path, {"source": {"connection": "bus", "topic": "t"}, "id": "orders"})
    code, _out, err = cli("run", str(path))
    assert code != 0 and f"run it with udop stream {path}" in err and "Traceback" not in err
    code, _out, err = cli("stream", str(tmp_path / "missing.yaml"))
    assert code != 0 and "Traceback" not in err


def test_udop_stream_refuses_a_pipeline_without_a_stream_trigger(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "batch.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "udop/v1",
                "kind": "Pipeline",
                "metadata": {"name": "b"},
                "spec": {
                    "tasks": [{"id": "a", "type": "extract", "source": {"connector": "csv", "path": "x.csv"}}]
                },
            }
        )
    )
    code, _out, err = cli("stream", str(path))
    assert code != 0 and "has no spec.trigger.stream" in err
