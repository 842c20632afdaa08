"""Attacks through HTTP on a live ``udop serve`` app (uvicorn, real SQLite store): an operator's
definitions may not read the host's files or environment, write outside the roots, run arbitrary
python, or store a secret; and nothing secret reaches any response, log or stored row."""

from __future__ import annotations

import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from api.conftest import SECRET, Api

CANARY = "canary-" + uuid.uuid4().hex


@pytest.fixture(autouse=True)
def _host_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    # what an attacker is after: the server's own secrets, in its environment
    monkeypatch.setenv("UDOP_JWT_SECRET", SECRET)
    monkeypatch.setenv("UDOP_CANARY_PASSWORD", CANARY)


def _doc(name: str, tasks: list[dict[str, Any]], **spec: Any) -> str:
    return yaml.safe_dump({"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
                           "spec": {**spec, "tasks": tasks}}, sort_keys=False)


def _stored(tmp_path: Path) -> str:
    with sqlite3.connect(tmp_path / "meta.db") as conn:
        return "\n".join(str(line) for line in conn.iterdump())


def _assert_nothing_leaked(*texts: str) -> None:
    passwd = Path("/etc/passwd").read_text().splitlines()[0]  # e.g. root:x:0:0:root:/root:/bin/bash
    for text in texts:
        for leaked in (SECRET, CANARY, passwd, "/usr/sbin/nologin", "PATH=/"):
            assert leaked not in text, f"{leaked[:20]!r} leaked into: {text[:300]}"


def _run(api: Api, name: str) -> tuple[dict[str, Any], str]:
    op = api.client("operator")
    run_id = op.post(f"/pipelines/{name}/runs").json()["run_id"]
    body = api.wait_for_run(run_id, {"succeeded", "failed"})
    viewer = api.client("viewer")
    seen = "\n".join(viewer.get(path).text for path in (
        f"/runs/{run_id}", f"/runs/{run_id}/checks", f"/runs/{run_id}/lineage", f"/pipelines/{name}"))
    return body, seen


def _refusal(api: Api, text: str) -> str:
    resp = api.register(text)
    assert resp.status_code == 422, resp.text
    return str(resp.text)


def test_env_secret_in_a_derive_is_refused_at_registration_naming_the_field(api: Api, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    text = _doc("envleak", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}},
        {"id": "t", "type": "transform", "depends_on": ["e"],
         "steps": [{"derive": {"s": "${env.UDOP_JWT_SECRET}"}},
                   {"check": [{"accepted_values": {"column": "s", "values": ["x"]}}]}]},
    ])
    body = _refusal(api, text)
    assert "spec.tasks[1].steps[0].derive.s" in body and "UDOP_ENV_ALLOWLIST" in body
    assert api.client("viewer").get("/pipelines/envleak").status_code == 404
    _assert_nothing_leaked(body, _stored(tmp_path))


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/proc/self/environ')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_blob('/etc/hostname')",
    "SELECT CAST(content AS INTEGER) AS n FROM read_text('/etc/passwd')",
    "SELECT * FROM read_csv('{root}/../../../../etc/passwd')",
])
def test_sql_steps_cannot_read_host_files(api: Api, tmp_path: Path, sql: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    text = _doc("sqlread", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}},
        {"id": "t", "type": "transform", "depends_on": ["e"], "steps": [{"sql": sql.format(root=tmp_path)}]},
    ])
    assert api.register(text).status_code == 201
    with caplog.at_level(logging.DEBUG):
        body, seen = _run(api, "sqlread")
    assert body["state"] == "failed"
    task = {t["task_id"]: t for t in body["tasks"]}["t"]
    message = str(task["error_message"])
    assert "refused by the server's sandbox" in message, message
    assert "\n" not in message
    _assert_nothing_leaked(seen, caplog.text, _stored(tmp_path))


def test_read_xlsx_does_not_install_an_extension(api: Api, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    text = _doc("xlsx", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}},
        {"id": "t", "type": "transform", "depends_on": ["e"],
         "steps": [{"sql": f"SELECT * FROM read_xlsx('{tmp_path}/in.xlsx')"}]},
    ])
    assert api.register(text).status_code == 201
    body, seen = _run(api, "xlsx")
    assert body["state"] == "failed"
    assert "does not install DuckDB extensions" in seen
    assert not list(Path.home().glob(".duckdb/extensions/*/*/excel*"))


@pytest.mark.parametrize("path", ["/etc/passwd", "{root}/../../../../../etc/passwd", "/etc/*.conf"])
def test_an_extract_of_a_host_file_is_refused(api: Api, tmp_path: Path, path: str) -> None:
    body = _refusal(api, _doc("hostfile", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": path.format(root=tmp_path)}}]))
    assert "spec.tasks[0].source.path" in body
    _assert_nothing_leaked(body)


def test_a_symlink_out_of_the_roots_is_not_followed(api: Api, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir(exist_ok=True)
    link = tmp_path / "data" / "passwd.csv"
    link.symlink_to("/etc/passwd")
    # named directly: refused at registration, the link resolved
    refused = _refusal(api, _doc("symlink", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(link)}}]))
    assert "spec.tasks[0].source.path" in refused
    # matched by a glob below a root: refused when the run finds it
    assert api.register(_doc("symlink", [
        {"id": "e", "type": "extract",
         "source": {"connector": "csv", "path": str(tmp_path / "data" / "*.csv")}}])).status_code == 201
    body, seen = _run(api, "symlink")
    assert body["state"] == "failed"
    assert "outside the folders this server may use" in seen
    _assert_nothing_leaked(seen, _stored(tmp_path))


def test_a_load_outside_the_roots_is_refused(api: Api, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    outside = Path("/tmp") / f"udop-evil-{uuid.uuid4().hex}.csv"
    body = _refusal(api, _doc("evilload", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}},
        {"id": "l", "type": "load", "depends_on": ["e"], "target": {"connector": "csv", "path": str(outside)}},
    ]))
    assert "spec.tasks[1].target.path" in body
    assert not outside.exists()


def test_overwrite_never_replaces_what_udop_did_not_write(api: Api, tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a\n1\n")
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("years of work")
    single = tmp_path / "report.csv"
    single.write_text("mine\n")
    for name, target in (("ow-dir", {"connector": "parquet", "path": str(foreign), "mode": "overwrite"}),
                         ("ow-file", {"connector": "csv", "path": str(single), "mode": "overwrite"})):
        assert api.register(_doc(name, [
            {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}},
            {"id": "l", "type": "load", "depends_on": ["e"], "target": target}])).status_code == 201
        body, seen = _run(api, name)
        assert body["state"] == "failed"
        assert "was not written by udop" in seen
    assert (foreign / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.txt"]
    assert single.read_text() == "mine\n"
    assert not list(tmp_path.glob(".report.csv*"))  # not moved aside either

    # what udop wrote itself it may overwrite: run twice onto a new folder
    assert api.register(_doc("ow-own", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}},
        {"id": "l", "type": "load", "depends_on": ["e"],
         "target": {"connector": "parquet", "path": str(tmp_path / "out"), "mode": "overwrite"}}]
    )).status_code == 201
    assert _run(api, "ow-own")[0]["state"] == "succeeded"
    assert _run(api, "ow-own")[0]["state"] == "succeeded"


@pytest.mark.parametrize("callable_", ["builtins:print", "os:system", "subprocess:run",
                                       "udop.api.keys:ApiKeys"])
def test_python_tasks_only_from_the_allowed_modules(api: Api, callable_: str) -> None:
    body = _refusal(api, _doc("py", [{"id": "p", "type": "python", "callable": callable_}]))
    assert "spec.tasks[0].callable" in body and "is not one this server runs python tasks from" in body


def test_a_private_name_of_an_allowed_module_is_refused(api: Api) -> None:
    body = _refusal(api, _doc("py", [{"id": "p", "type": "python", "callable": f"{api.module}:__builtins__"}]))
    assert "public functions" in body


@pytest.mark.parametrize(("connection", "field"), [
    ({"connector": "postgres", "host": "db", "user": "u", "password": "pw-{c}"}, "password"),
    ({"connector": "postgres", "url": "postgresql://u:pw-{c}@db/x"}, "url"),
    ({"connector": "http", "url": "https://x.example", "auth": {"type": "bearer", "token": "pw-{c}"}},
     "auth.token"),
])
def test_inline_secrets_are_refused_and_never_stored_or_returned(
    api: Api, tmp_path: Path, connection: dict[str, Any], field: str
) -> None:
    marker = uuid.uuid4().hex
    conn = yaml.safe_load(yaml.safe_dump(connection).replace("{c}", marker))
    body = _refusal(api, _doc("inline", [{"id": "p", "type": "python", "callable": f"{api.module}:numbers"}],
                              connections={"wh": conn}))
    assert f"spec.connections.wh.{field}" in body
    assert "{env: NAME}" in body and "{secret: name-or-arn}" in body and "{file: NAME}" in body
    assert marker not in body and marker not in _stored(tmp_path)


@pytest.mark.parametrize("ref", [{"file": "/etc/passwd"}, {"env": "UDOP_CANARY_PASSWORD"}])
def test_secret_references_outside_the_allowlists_are_refused(api: Api, ref: dict[str, str]) -> None:
    body = _refusal(api, _doc("refs", [{"id": "p", "type": "python", "callable": f"{api.module}:numbers"}],
                              connections={"wh": {"connector": "postgres", "host": "db", "password": ref}}))
    assert "spec.connections.wh.password" in body
    _assert_nothing_leaked(body)


def test_get_pipeline_masks_a_secret_stored_before_the_server_checked(api: Api, tmp_path: Path) -> None:
    # a row written by an older udop (or straight into the store): the API still does not show it
    api.store.register_pipeline("legacy", {"apiVersion": "udop/v1", "kind": "Pipeline",
                                           "metadata": {"name": "legacy"},
                                           "spec": {"connections": {"wh": {"connector": "postgres",
                                                                           "password": CANARY}},
                                                    "tasks": []}})
    text = api.client("viewer").get("/pipelines/legacy").text
    assert "**********" in text
    _assert_nothing_leaked(text)


def test_an_allowlisted_secret_variable_never_shows_in_check_samples(
    api_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the administrator allowed the variable (e.g. to salt a hash); its value is still a secret
    monkeypatch.setenv("UDOP_ENV_ALLOWLIST", "UDOP_CANARY_PASSWORD")
    api = api_factory()
    (tmp_path / "in.csv").write_text("a\n1\n")
    assert api.register(_doc("samples", [
        {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}},
        {"id": "t", "type": "transform", "depends_on": ["e"],
         "steps": [{"derive": {"s": "${env.UDOP_CANARY_PASSWORD}"}},
                   {"check": [{"accepted_values": {"column": "s", "values": ["x"]}}]}]},
    ])).status_code == 201
    with caplog.at_level(logging.DEBUG):
        body, seen = _run(api, "samples")
    assert body["state"] == "failed"
    assert "**********" in seen  # the failing row is shown, its secret value masked
    _assert_nothing_leaked(seen, caplog.text, _stored(tmp_path))


@pytest.fixture
def postgres_url() -> Any:
    import psycopg

    name = f"udop_sandbox_{uuid.uuid4().hex[:12]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def _rows(engine: Any) -> str:
    from sqlalchemy import MetaData, select

    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return "\n".join(repr(list(conn.execute(select(t)))) for t in meta.sorted_tables)


@pytest.mark.postgres
def test_on_postgres_metadata_nothing_secret_is_stored_or_shown(
    api_factory: Any, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_ENV_ALLOWLIST", "UDOP_CANARY_PASSWORD")
    api = api_factory(database_url=postgres_url)
    (tmp_path / "in.csv").write_text("a\n1\n")
    extract = {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(tmp_path / "in.csv")}}
    refused = [
        _refusal(api, _doc("pg1", [extract, {"id": "t", "type": "transform", "depends_on": ["e"],
                                             "steps": [{"derive": {"s": "${env.UDOP_JWT_SECRET}"}}]}])),
        _refusal(api, _doc("pg2", [extract], connections={
            "wh": {"connector": "postgres", "url": f"postgresql://u:{CANARY}@db/x"}})),
    ]
    assert api.register(_doc("pg3", [extract, {
        "id": "t", "type": "transform", "depends_on": ["e"],
        "steps": [{"derive": {"s": "${env.UDOP_CANARY_PASSWORD}"}},
                  {"sql": "SELECT this.*, (SELECT count(*) FROM read_text('/etc/passwd')) AS n FROM this"}]}])
    ).status_code == 201
    body, seen = _run(api, "pg3")
    assert body["state"] == "failed"
    assert "refused by the server's sandbox" in seen
    _assert_nothing_leaked(*refused, seen, _rows(api.engine))
