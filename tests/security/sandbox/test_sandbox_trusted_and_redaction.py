"""``udop run`` stays trusted (any file, variable, SQL); the same definition under a server policy is
refused; a trusted run keeps inline secrets masked in the store; logs pass through the redactor."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from udop.errors import SpecErrors
from udop.executor.local import LocalExecutor
from udop.sandbox import MASK, install_log_redaction, redactor, server_policy
from udop.spec.models import Pipeline
from udop.states import RunState
from udop.store import open_store


def _pipeline(outside: Path) -> Pipeline:
    return Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": f"trusted-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "connections": {"wh": {"connector": "postgres", "host": "db", "password": "inline-pw-123"}},
            "tasks": [
                {"id": "e", "type": "extract", "source": {"connector": "csv", "path": str(outside)}},
                {"id": "t", "type": "transform", "depends_on": ["e"],
                 "steps": [{"sql": "SELECT e.*, (SELECT count(*) FROM glob('/etc/*')) AS etc_files FROM e"},
                           {"derive": {"home": "${env.UDOP_TRUSTED_PROBE}"}}]},
            ],
        },
    })


def test_udop_run_is_trusted_and_the_same_definition_is_refused_on_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UDOP_TRUSTED_PROBE", "probe-value")
    outside = tmp_path / "elsewhere" / "in.csv"
    outside.parent.mkdir()
    outside.write_text("a\n1\n")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    pipeline = _pipeline(outside)
    run = LocalExecutor(store, data_root=str(tmp_path / "data")).run(pipeline)
    assert run.state == RunState.SUCCEEDED, run
    table = __import__("pyarrow.parquet", fromlist=["x"]).read_table(str(tmp_path / "data" / "runs" /
                                                                       pipeline.name / run.id / "t"))
    assert table.column("home").to_pylist() == ["probe-value"]
    assert table.column("etc_files").to_pylist()[0] > 0
    # stored masked, even in trusted mode
    stored = store.get_pipeline(pipeline.name)
    assert stored is not None and stored.latest is not None
    text = repr(stored.latest.definition)
    assert "inline-pw-123" not in text and MASK in text

    # the same definition under a server policy: the variable is not there to read
    policy = server_policy(data_root=str(tmp_path / "data"))
    with pytest.raises(SpecErrors, match="UDOP_TRUSTED_PROBE"):
        LocalExecutor(store, data_root=str(tmp_path / "data"), policy=policy).run(pipeline)
    store.close()


def test_log_records_are_redacted_message_and_traceback(caplog: pytest.LogCaptureFixture) -> None:
    secret = "logged-secret-" + uuid.uuid4().hex
    redactor.add_secret(secret)
    install_log_redaction()
    log = logging.getLogger("udop.test.redaction")
    with caplog.at_level(logging.INFO):
        log.info("connecting with %s", secret)
        try:
            raise RuntimeError(f"login failed for postgresql://u:{secret}@db/x")
        except RuntimeError:
            log.exception("task failed")
    assert secret not in caplog.text
    assert caplog.text.count(MASK) >= 2
