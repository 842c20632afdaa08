"""``trigger: after:`` is checked when the definition loads: one line each, non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from udop.cli import main


def _validate(tmp_path: Path, trigger: str, params: str = "") -> str:
    path = tmp_path / "p.yaml"
    path.write_text(
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: down}\nspec:\n"
        f"{params}  trigger: {trigger}\n"
        '  tasks: [{id: a, type: python, callable: "os:getcwd"}]\n'
    )
    try:
        main(["validate", str(path)])
    except SystemExit as exc:
        if exc.code not in (0, None):
            return "error"
    return "ok"


@pytest.mark.parametrize(("trigger", "message"), [
    ("{after: {pipeline: down}}", "spec.trigger.after.pipeline 'down' is this pipeline"),
    ("{after: {pipeline: up, param: run}}", "trigger.after.param 'run' is not a declared parameter"),
    ("{after: {pipeline: up, status: failed}}", "spec.trigger.after.status: unknown key 'status'"),
    ("{after: {pipeline: up, window: soon}}", "window 'soon' must look like '6 hours' or '1 day'"),
    ("{after: {pipeline: up}, files: {path: in}}", "spec.trigger: give exactly one of 'files', 'after' or 'stream'"),
])
def test_a_bad_after_trigger_is_one_located_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trigger: str, message: str
) -> None:
    assert _validate(tmp_path, trigger) == "error"
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and str(tmp_path / "p.yaml") in err


def test_a_good_after_trigger_loads(tmp_path: Path) -> None:
    assert _validate(tmp_path, "{after: {pipeline: up, param: run, window: 6 hours}}",
                     params="  params: {run: {type: str}}\n") == "ok"
