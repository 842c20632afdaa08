"""The CLI as a user meets it: exit codes, one-line errors, init -> run -> runs show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def test_help_on_every_command(cli: Any) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for name in ("init", "validate", "run", "graph", "runs", "schema"):
        assert name in out
        sub_code, sub_out, _ = cli(name, "--help")
        assert sub_code == 0 and "Usage: udop " + name in sub_out
    assert cli("runs", "show", "--help")[0] == 0


def test_init_then_run_the_example_then_look_at_it(cli: Any, tmp_path: Path) -> None:
    code, out, _ = cli("init", "proj", cwd=tmp_path)
    assert code == 0 and "created proj/pipeline.yaml" in out.replace(str(tmp_path) + "/", "")
    project = tmp_path / "proj"
    code, out, err = cli("run", "pipeline.yaml", "--param", "orders=500", cwd=project)
    assert code == 0, err
    assert "report succeeded" in out  # line-per-event log: stdout is not a terminal here
    run_id = out.split("run ")[1].split()[0]
    code, out, _ = cli("runs", "list", "--json", cwd=project)
    listed = json.loads(out)
    assert [r["id"] for r in listed] == [run_id] and listed[0]["state"] == "succeeded"
    assert listed[0]["params"] == {"orders": 500, "seed": 7}
    assert listed[0]["trigger"] == "cli"
    code, out, _ = cli("runs", "show", run_id, cwd=project)
    assert code == 0
    for task in ("orders", "regions", "totals", "report"):
        assert task in out
    assert "lineage" in out and "500 rows" in out
    code, out, _ = cli("runs", "show", run_id, "--json", cwd=project)
    body = json.loads(out)
    report = next(t for t in body["tasks"] if t["task_id"] == "report")
    assert report["result"]["value"]["orders"] > 0
    # the figure the example reports equals an independent computation over its own output
    import pyarrow.parquet as pq

    orders = pq.read_table(
        next(x for x in body["lineage"] if x["task_id"] == "orders")["output_uri"]
    ).to_pandas()
    best = orders.groupby("region")["amount"].sum().max()
    assert report["result"]["value"]["amount"] == pytest.approx(round(best, 2))


def test_init_refuses_to_overwrite(cli: Any, tmp_path: Path) -> None:
    assert cli("init", str(tmp_path))[0] == 0
    code, _, err = cli("init", str(tmp_path))
    assert code == 2 and "already exists; use --force" in err


def test_failed_run_exits_1_and_says_how_to_resume(cli: Any, project: Any) -> None:
    path = project.pipeline(
        [project.task("bad", "fail_fatal"), project.task("after", "record", depends_on=["bad"])]
    )
    code, out, _ = cli("run", str(path), cwd=project.root)
    assert code == 1
    assert "bad failed: udop.FatalError: bad data: column 'x' missing" in out
    assert "after upstream_failed" in out
    assert "--resume" in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "p.yaml: file is empty"),
        (
            "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: x}\nspec: {tasks: [{id: a, type: python, callable: 'nope_mod:f'}]}\n",
            "p.yaml:4: spec.tasks[0].callable: cannot import module 'nope_mod'",
        ),
    ],
)
def test_invalid_definition_exits_2_with_one_line(cli: Any, tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "p.yaml").write_text(text)
    for command in (("validate", "p.yaml"), ("run", "p.yaml")):
        code, _out, err = cli(*command, cwd=tmp_path)
        assert code == 2
        assert err.strip().startswith(message), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_parameter_exits_2(cli: Any, project: Any) -> None:
    path = project.pipeline([project.task("t", "record")], params={"day": {"type": "date"}})
    code, _, err = cli("run", str(path), cwd=project.root)
    assert code == 2 and "parameter 'day' has no default and no value; give it with --param day=VALUE" in err
    code, _, err = cli("run", str(path), "--param", "day", cwd=project.root)
    assert code == 2 and "'day' is not KEY=VALUE" in err


def test_usage_errors_exit_2(cli: Any, tmp_path: Path) -> None:
    assert cli("run", cwd=tmp_path)[0] == 2
    assert cli("nosuchcommand")[0] == 2
    code, _, err = cli("runs", "show", "nope", cwd=tmp_path)
    assert code == 2 and "no run 'nope'" in err


def test_validate_reports_every_file(cli: Any, tmp_path: Path) -> None:
    assert cli("init", str(tmp_path / "ok"))[0] == 0
    (tmp_path / "bad.yaml").write_text("apiVersion: udop/v1\nkind: Pipeline\n")
    code, out, err = cli("validate", "ok/pipeline.yaml", "bad.yaml", cwd=tmp_path)
    assert code == 2
    assert "ok/pipeline.yaml: ok (daily-orders, 4 tasks)" in out
    assert "bad.yaml:1: missing required key 'metadata'" in err


def test_graph_formats(cli: Any, project: Any) -> None:
    path = project.pipeline([project.task("a"), project.task("b-1", depends_on=["a"])])
    code, out, _ = cli("graph", str(path))
    assert code == 0 and out.startswith("flowchart LR") and "t_a --> t_b__1" in out
    code, out, _ = cli("graph", str(path), "--format", "dot")
    assert code == 0 and '"a" -> "b-1";' in out


def test_schema_describes_the_definition(cli: Any, tmp_path: Path) -> None:
    _code, out, _ = cli("schema")
    schema = json.loads(out)
    assert schema["title"] == "udop/v1 Pipeline"
    assert set(schema["required"]) == {"apiVersion", "kind", "metadata", "spec"}
    assert schema["additionalProperties"] is False
    assert "PythonTask" in schema["$defs"]


def test_entry_point_prints_no_traceback_for_bad_input(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_bytes(b"\x00\x01\x02")
    udop = Path(sys.executable).parent / "udop"
    proc = subprocess.run(  # noqa: PLW1510 - the return code is what is checked
        [str(udop), "validate", "p.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert proc.stderr == "p.yaml: not a text file (it contains NUL bytes); expected YAML or JSON\n"
