"""Loading definitions: every kind of bad input gets one located line and exit 2, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from udop.errors import SpecErrors
from udop.spec.loader import load_pipeline

GOOD = """\
apiVersion: udop/v1
kind: Pipeline
metadata: {name: demo, owner: data-team, tags: [a, b]}
spec:
  params:
    month: {type: int, default: 1}
  defaults:
    retry: {max_attempts: 3, base_delay: 2s, max_delay: 1m, backoff_rate: 2, jitter: full}
    timeout: 10m
  tasks:
    - id: first
      type: python
      callable: os.path:join
    - id: second
      type: python
      callable: os.path:join
      depends_on: [first]
      retry: {max_attempts: 5}
      timeout: 90s
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages name the file as the user wrote it: p.yaml


def _errors(tmp_path: Path, text: str | bytes, name: str = "p.yaml") -> list[str]:
    (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecErrors) as info:
        load_pipeline(name, import_callables=True)
    return [str(e) for e in info.value.errors]


def test_a_good_definition_loads_with_durations_and_defaults_applied(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(GOOD)
    pipeline = load_pipeline(path, import_callables=True)
    second = pipeline.task("second")
    assert pipeline.name == "demo"
    assert pipeline.timeout_for(second) == 90.0
    assert pipeline.timeout_for(pipeline.task("first")) == 600.0
    assert pipeline.retry_for(second).max_attempts == 5
    assert pipeline.retry_for(pipeline.task("first")).max_delay == 60.0
    with pytest.raises(Exception, match="frozen"):
        pipeline.metadata.name = "other"  # type: ignore[misc]


def test_json_definitions_load_too(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "p.json"
    path.write_text(json.dumps(yaml.safe_load(GOOD)))
    assert load_pipeline(path).task("second").depends_on == ["first"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "p.yaml: file is empty"),
        ("   \n# only a comment\n", "p.yaml: file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "p.yaml: not a text file"),
        (b"\xff\xfe\xfa garbage", "p.yaml: not UTF-8 text"),
        ("apiVersion: udop/v1\nkind: [Pipeline\nmetadata: {}\n", "p.yaml:3: malformed YAML"),
        ("- just\n- a list\n", "p.yaml:1: the document is a list, not a mapping"),
        ("just a string\n", "p.yaml:1: the document is a str, not a mapping"),
        (
            "apiVersion: udop/v2\nkind: Pipeline\n",
            "p.yaml:1: apiVersion: expected 'udop/v1', found 'udop/v2'",
        ),
        ("kind: Pipeline\n", "p.yaml:1: apiVersion: expected 'udop/v1', found missing"),
        ("a: 1\na: 2\n", "p.yaml:2: duplicate key 'a'"),
    ],
)
def test_unreadable_documents(tmp_path: Path, content: str | bytes, expected: str) -> None:
    errors = _errors(tmp_path, content)
    assert len(errors) == 1
    assert errors[0].startswith(expected), errors[0]


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    bomb = (
        "apiVersion: udop/v1\nkind: Pipeline\n"
        + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
            for i in range(1, 9)
        )
    )
    errors = _errors(tmp_path, bomb)
    assert "alias bomb" in errors[0] and errors[0].startswith("p.yaml:")


def _with(tasks: str, extra_spec: str = "") -> str:
    return (
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: demo}\nspec:\n"
        + extra_spec
        + "  tasks:\n"
        + tasks
    )


def test_unknown_key_names_its_path_line_and_a_close_match(tmp_path: Path) -> None:
    text = _with("    - id: a\n      type: python\n      callable: os:getcwd\n      depnds_on: [b]\n")
    assert _errors(tmp_path, text) == [
        "p.yaml:9: spec.tasks[0].depnds_on: unknown key 'depnds_on'; did you mean 'depends_on'?"
    ]


def test_unknown_key_at_the_top_and_in_metadata(tmp_path: Path) -> None:
    text = (
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: demo, ownr: me}\nspek: {}\nspec:\n"
        "  tasks: [{id: a, type: python, callable: 'os:getcwd'}]\n"
    )
    errors = _errors(tmp_path, text)
    assert "p.yaml:3: metadata.ownr: unknown key 'ownr'; did you mean 'owner'?" in errors
    assert "p.yaml:4: spek: unknown key 'spek'; did you mean 'spec'?" in errors


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    text = _with(
        "    - id: a\n      type: python\n      callable: os:getcwd\n      retry: {max_attempts: many}\n"
    )
    (error,) = _errors(tmp_path, text)
    assert error.startswith("p.yaml:9: spec.tasks[0].retry.max_attempts: input should be a valid integer")


def test_bad_duration(tmp_path: Path) -> None:
    text = _with("    - id: a\n      type: python\n      callable: os:getcwd\n      timeout: soon\n")
    (error,) = _errors(tmp_path, text)
    assert error.startswith("p.yaml:9: spec.tasks[0].timeout: 'soon' is not a duration")


def test_unknown_task_type_suggests_the_right_one(tmp_path: Path) -> None:
    (error,) = _errors(tmp_path, _with("    - {id: a, type: pyhton, callable: 'os:getcwd'}\n"))
    assert error.startswith(
        "p.yaml:6: spec.tasks[0].type: unknown task type 'pyhton'; did you mean 'python'?"
    )


def test_duplicate_task_id(tmp_path: Path) -> None:
    text = _with(
        "    - {id: a, type: python, callable: 'os:getcwd'}\n    - {id: a, type: python, callable: 'os:getcwd'}\n"
    )
    assert _errors(tmp_path, text) == [
        "p.yaml:7: spec.tasks[1].id: duplicate task id 'a' (first used by spec.tasks[0])"
    ]


def test_unknown_dependency(tmp_path: Path) -> None:
    text = _with(
        "    - {id: load, type: python, callable: 'os:getcwd'}\n"
        "    - {id: b, type: python, callable: 'os:getcwd', depends_on: [laod]}\n"
    )
    assert _errors(tmp_path, text) == [
        "p.yaml:7: spec.tasks[1].depends_on[0]: unknown task 'laod'; did you mean 'load'?"
    ]


def test_cycle_is_printed(tmp_path: Path) -> None:
    text = _with(
        "    - {id: a, type: python, callable: 'os:getcwd', depends_on: [b]}\n"
        "    - {id: b, type: python, callable: 'os:getcwd', depends_on: [a]}\n"
        "    - {id: c, type: python, callable: 'os:getcwd'}\n"
    )
    assert _errors(tmp_path, text) == ["p.yaml:6: spec.tasks[0].depends_on: dependency cycle: a -> b -> a"]


def test_undeclared_parameter_reference(tmp_path: Path) -> None:
    text = _with(
        "    - {id: a, type: python, callable: 'os:getcwd', args: {m: '${params.mnth}'}}\n",
        "  params: {month: {type: int}}\n",
    )
    (error,) = _errors(tmp_path, text)
    assert (
        error
        == "p.yaml:7: spec.tasks[0].args.m: unknown parameter 'params.mnth'; did you mean 'params.month'?"
    )


def test_callable_that_does_not_import(tmp_path: Path) -> None:
    text = _with(
        "    - {id: a, type: python, callable: 'no_such_module_xyz:run'}\n"
        "    - {id: b, type: python, callable: 'os.path:no_such_function'}\n"
    )
    errors = _errors(tmp_path, text)
    assert errors == [
        "p.yaml:6: spec.tasks[0].callable: cannot import module 'no_such_module_xyz' (No module named 'no_such_module_xyz')",
        "p.yaml:7: spec.tasks[1].callable: module 'os.path' has no attribute 'no_such_function'",
    ]


def test_malformed_callable_string(tmp_path: Path) -> None:
    (error,) = _errors(tmp_path, _with("    - {id: a, type: python, callable: 'not a callable'}\n"))
    assert error.startswith("p.yaml:6: spec.tasks[0].callable: string should match pattern")


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    text = _with(
        "    - {id: a, type: python, callable: 'os:getcwd', retries: 3}\n    - {id: b, type: python}\n"
    )
    errors = _errors(tmp_path, text)
    assert "p.yaml:6: spec.tasks[0].retries: unknown key 'retries'; did you mean 'retry'?" in errors
    assert "p.yaml:7: spec.tasks[1]: missing required key 'callable'" in errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecErrors, match=r"^nope\.yaml: no such file$"):
        load_pipeline("nope.yaml")
