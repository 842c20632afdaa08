"""The limits behind the HTTP answers, where HTTP cannot reach them: ``udop validate`` on a hostile
file, the parse time budget, aliases nesting deeper than the text, and audit retention."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select

from udop.errors import SpecError, SpecErrors

UDOP = Path(sys.executable).parent / "udop"


def test_udop_validate_on_yaml_nested_500_deep_is_one_located_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: d}\nspec:\n  tasks: " + "[" * 500 + "]" * 500
    )
    env = {**os.environ, "UDOP_HOME": str(tmp_path / ".udop")}
    done = subprocess.run(
        [str(UDOP), "validate", str(path)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [f"{path}:5: nested more than 100 levels deep; a definition does not need this"]
    assert "internal error" not in done.stdout + done.stderr


def test_aliases_that_nest_deeper_than_the_text_are_refused() -> None:
    from udop.spec.loader import parse_definition

    lines = ["apiVersion: udop/v1", "kind: Pipeline", "l0: &l0 [x]"]
    lines += [f"l{i}: &l{i} [*l{i - 1}]" for i in range(1, 120)]
    with pytest.raises(SpecError, match="nested more than 100 levels deep"):
        parse_definition("\n".join(lines), "aliases.yaml")


def test_a_parse_past_its_time_budget_stops_with_a_located_error() -> None:
    from udop.spec.loader import load_pipeline, parse_definition

    text = "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: t}\nspec:\n  x: [" + "1," * 50_000 + "]\n"
    with pytest.raises(SpecErrors, match=r"slow\.yaml:5: parsing took longer than 1e-06 s"):
        load_pipeline(text.encode(), filename="slow.yaml", time_budget=0.000001)
    # the same text within a budget it fits parses
    assert len(parse_definition(text, "slow.yaml", time_budget=300).data["spec"]["x"]) == 50_000


@pytest.mark.parametrize("retention", [30, 0])
def test_audit_rows_past_the_retention_are_deleted_when_the_server_starts(
    tmp_path: Path, retention: int
) -> None:
    from udop.api import ApiSettings, create_app
    from udop.api.audit import audit_log_table as t
    from udop.api.audit import ensure_api_tables
    from udop.store import open_store

    url = f"sqlite:///{tmp_path / 'meta.db'}"
    store = open_store(url)
    ensure_api_tables(store.engine)
    now = datetime.now(UTC)
    row = {
        "actor": "a",
        "actor_kind": "jwt",
        "action": "x",
        "method": "POST",
        "path": "/p",
        "status": 201,
        "outcome": "success",
    }
    with store.engine.begin() as conn:
        conn.execute(insert(t).values(at=now - timedelta(days=45), detail="old", **row))
        conn.execute(insert(t).values(at=now - timedelta(days=5), detail="recent", **row))
    settings = ApiSettings(
        database_url=url,
        data_root=str(tmp_path / "data"),
        jwt_secret="s" * 40,
        audit_retention_days=retention,
    )
    app = create_app(settings, store=store)
    with create_engine(url).connect() as conn:
        kept = [r.detail for r in conn.execute(select(t).order_by(t.c.id))]
    assert kept == (["recent"] if retention else ["old", "recent"])
    app.state.udop.launcher.close()
    store.close()
