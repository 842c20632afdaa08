"""Property: on a server, generated emails, card numbers and secrets put into rows, task arguments
and errors appear in no log line, no stored metadata row (attempt errors, results, run error,
check samples and messages), no attempt's captured log (the file itself, and as `udop logs` reads it
through the attempt's record) and no API response (the run, its checks, the task's logs)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import uuid
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st
from test_masking import cards, emails

from udop.executor.local import LocalExecutor
from udop.observability.tasklogs import render_log
from udop.sandbox import SandboxSettings, server_policy
from udop.spec.loader import load_pipeline
from udop.states import RunState
from udop.store import open_store

TASKS = '''
import logging
from udop.errors import FatalError

def leak(context, inputs, token):
    row = inputs["people"].to_arrow().to_pylist()[0]
    logging.getLogger("user.code").warning("customer %s card %s token %s", row["email"], row["card"], token)
    print(f"printing {row['email']} / {row['card']} / {token}")
    logging.getLogger("user.code").error("with a traceback", exc_info=ValueError(f"bad {row['email']} {token}"))
    raise FatalError(f"could not bill {row['email']} with card {row['card']} (token {token})")
'''

def _api_answers(root: Path, store: object, run_id: str) -> str:
    """What a viewer gets from the API about the run: the run, its checks, the failed task's logs."""
    import asyncio
    import time

    import httpx
    import jwt

    from udop.api import ApiSettings, create_app

    secret = "pii-test-" + "k" * 40
    app = create_app(ApiSettings(database_url=f"sqlite:///{root / 'meta.db'}", data_root=str(root / "data"),
                                 jwt_secret=secret), store=store)
    now = int(time.time())
    token = jwt.encode({"sub": "v", "role": "viewer", "iat": now, "exp": now + 600}, secret, algorithm="HS256")

    async def ask() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://udop.test",
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            return [await client.get(f"/runs/{run_id}"), await client.get(f"/runs/{run_id}/checks"),
                    await client.get(f"/runs/{run_id}/tasks/bill/logs")]

    try:
        answers = asyncio.run(ask())
        assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
        return "\n".join(a.text for a in answers)
    finally:
        app.state.udop.launcher.close()


secrets = st.from_regex(r"[A-Za-z0-9]{12,32}", fullmatch=True)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@settings(max_examples=8, deadline=None)
@given(email=emails, card=cards, token=secrets)
def test_no_generated_pii_or_secret_reaches_a_log_or_a_stored_row(email: str, card: str, token: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="udop-pii-"))
    module = f"udop_pii_{uuid.uuid4().hex[:10]}"
    (root / f"{module}.py").write_text(TASKS)
    pq.write_table(pa.table({"email": [email], "card": [card], "status": ["open"]}), root / "people.parquet")
    (root / "p.yaml").write_text(json.dumps({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "pii"},
        "spec": {"tasks": [
            {"id": "people", "type": "extract", "source": {"connector": "parquet", "path": str(root / "people.parquet")}},
            {"id": "check", "type": "validate", "depends_on": "people",
             "rules": [{"accepted_values": {"column": "status", "values": ["closed"]}, "severity": "warn"}]},
            {"id": "bill", "type": "python", "callable": f"{module}:leak", "depends_on": ["people"],
             "args": {"token": "${env.UDOP_PII_API_TOKEN}"}},
        ]},
    }))
    capture = Capture()
    logging.getLogger().addHandler(capture)
    sys.path.insert(0, str(root))
    import os

    os.environ["UDOP_PII_API_TOKEN"] = token
    store = open_store(f"sqlite:///{root / 'meta.db'}")
    try:
        policy = server_policy(data_root=str(root / "data"), roots=[str(root)], code_dir=str(root),
                               settings=SandboxSettings(env_allowlist="UDOP_PII_API_TOKEN"))
        pipeline = load_pipeline(str(root / "p.yaml"), import_callables=True)
        executor = LocalExecutor(store, workers=2, data_root=str(root / "data"), policy=policy,
                                 services={"base_dir": str(root)})
        run = store.get_run(executor.run(pipeline).id)
        assert run.state == RunState.FAILED
        checks = store.get_checks(run.id)
        assert checks and checks[0].sample, "the failing check kept a sample row"
        stored = json.dumps([asdict(run), [asdict(c) for c in checks]], default=str)
        logged = "\n".join(capture.lines)
        assert "could not bill" in stored and "customer" in logged  # the texts are there, masked
        bill = next(t for t in run.tasks if t.task_id == "bill")
        record = bill.attempts[0].log
        assert record is not None and record["bytes"] > 0
        attempt_log = render_log(record)
        raw_file = Path(record["path"]).read_text()
        assert "printing" in attempt_log and "customer" in attempt_log and "attempt failed" in attempt_log
        answers = _api_answers(root, store, run.id)
        assert "could not bill" in answers and "printing" in answers
        for value in (email, card, card.replace(" ", ""), token):
            assert value not in stored, f"{value!r} stored"
            assert value not in logged, f"{value!r} logged"
            assert value not in raw_file, f"{value!r} in the attempt's log file"
            assert value not in attempt_log, f"{value!r} in the attempt's log as read"
            assert value not in answers, f"{value!r} in an API response"
    finally:
        store.close()
        logging.getLogger().removeHandler(capture)
        sys.path.remove(str(root))
        sys.modules.pop(module, None)
        os.environ.pop("UDOP_PII_API_TOKEN", None)
        shutil.rmtree(root, ignore_errors=True)
