"""Pipelines registered through ``udop serve`` run as ``udop run`` runs them: connectors that are not
files, python tasks from the server's code folder; and the metadata files it creates are private."""

from __future__ import annotations

import sqlite3
import stat
import time
import uuid
from typing import Any


def _wait(served: Any, run_id: str) -> dict[str, Any]:
    viewer = served.client("viewer")
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = viewer.get(f"/runs/{run_id}").json()
        if body["state"] in ("succeeded", "failed", "cancelled"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def _register_and_run(served: Any, text: str, name: str) -> dict[str, Any]:
    operator = served.client("operator")
    registered = operator.post("/pipelines", content=text, headers={"Content-Type": "application/yaml"})
    assert registered.status_code == 201, registered.text
    run = operator.post(f"/pipelines/{name}/runs", json={})
    assert run.status_code == 202, run.text
    return _wait(served, run.json()["run_id"])


def test_a_pipeline_reading_a_database_connector_runs_when_registered_through_the_api(
    served: Any, helpers: Any
) -> None:
    # below the server's sandbox roots: a server reads no file outside them
    source = served.home.parent / "sources" / f"shop-{uuid.uuid4().hex[:6]}.db"
    with sqlite3.connect(source) as db:
        db.execute("CREATE TABLE orders (id INTEGER, amount REAL)")
        db.executemany("INSERT INTO orders VALUES (?, ?)", [(1, 9.5), (2, 20.0)])
    name = f"conn-{uuid.uuid4().hex[:6]}"
    text = helpers.definition(
        name,
        [
            {
                "id": "orders",
                "type": "extract",
                "source": {"connector": "sqlite", "database": str(source), "table": "orders"},
            }
        ],
    )
    run = _register_and_run(served, text, name)
    assert run["state"] == "succeeded", run
    # stored as written: no defaults the connector would refuse
    stored = served.client("viewer").get(f"/pipelines/{name}").json()["versions"][-1]["definition"]
    assert stored["spec"]["tasks"][0]["source"] == {
        "connector": "sqlite",
        "database": str(source),
        "table": "orders",
    }


def test_python_tasks_import_from_the_code_folder_without_pythonpath(served: Any, helpers: Any) -> None:
    name = f"code-{uuid.uuid4().hex[:6]}"
    text = helpers.definition(name, [{"id": "hello", "type": "python", "callable": "sec_tasks:hello"}])
    run = _register_and_run(served, text, name)
    assert run["state"] == "succeeded", run


def test_the_metadata_database_is_created_private(served: Any) -> None:
    if served.backend != "sqlite":
        return  # PostgreSQL keeps its own files
    files = [served.home / n for n in ("udop.db", "udop.db-wal", "udop.db-shm")]
    assert all(f.exists() for f in files)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
