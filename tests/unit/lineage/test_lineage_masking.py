"""Lineage records pass the redactor before they are stored or sent: secrets, URL user info and (when
on) PII leave dataset names and error messages; a host's IP address stays, it is the identity."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from openlineage.client.serde import Serde

from udop.lineage.masking import masked_uri
from udop.lineage.openlineage import task_event
from udop.masking import install_detectors, remove_detectors
from udop.sandbox import MASK, redactor
from udop.states import AttemptState, TaskState
from udop.store import open_store
from udop.tasks.contract import Manifest, TaskResult

SECRET = "s3cr3t-token-never-kept"


@pytest.fixture
def pii() -> Iterator[None]:
    install_detectors()
    redactor.add_secret(SECRET)
    yield
    remove_detectors()


def test_names_lose_secrets_user_info_and_pii_but_keep_the_host(pii: None) -> None:
    assert masked_uri("s3://lake/exports/bob@example.com/2024") == f"s3://lake/exports/{MASK}/2024"
    assert masked_uri(f"https://api.example.com/v1/{SECRET}/items") == f"https://api.example.com/v1/{MASK}/items"
    assert masked_uri("postgres://app:pw@10.0.0.5:5432/shop.public.orders") == \
        "postgres://10.0.0.5:5432/shop.public.orders"
    assert masked_uri("postgres://10.0.0.5:5432/shop.public.orders") == "postgres://10.0.0.5:5432/shop.public.orders"
    assert masked_uri("/data/runs/p/r1/orders/") == "/data/runs/p/r1/orders/"  # unchanged: stored as it was
    assert masked_uri("task:prepare") == "task:prepare"


def test_the_store_keeps_masked_lineage_rows(pii: None, tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    store.register_pipeline("p", {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "p"},
                                  "spec": {"tasks": [{"id": "t", "type": "python", "callable": "m:f"}]}})
    store.create_run(run_id="r1", pipeline="p", pipeline_version=1, task_ids=["t"], params={},
                     logical_date=datetime(2024, 1, 1, tzinfo=UTC))
    store.start_attempt("r1", "t", 1)
    result = TaskResult(output=Manifest(uri="s3://lake/out/ann@example.com/", rows=1),
                        inputs=(f"https://u:{SECRET}@api.example.com/items",))
    store.finish_attempt("r1", "t", 1, attempt_state=AttemptState.SUCCEEDED, task_state=TaskState.SUCCEEDED,
                         result=result.to_dict())
    [row] = store.get_lineage("r1")
    assert row.inputs == ["https://api.example.com/items"]
    assert row.output_uri == f"s3://lake/out/{MASK}"
    assert "example.com/" in row.inputs[0] and SECRET not in repr(row)
    store.close()


def test_events_carry_masked_names_and_messages(pii: None) -> None:
    result = TaskResult(output=Manifest(uri="s3://lake/out/ann@example.com/", rows=1),
                        inputs=("postgres://10.0.0.5:5432/shop.public.orders",))
    done = json.loads(Serde.to_json(task_event("COMPLETE", "p", "r1", "t", 1, result=result)))
    assert [(d["namespace"], d["name"]) for d in done["outputs"]] == [("s3://lake", f"out/{MASK}")]
    assert done["inputs"][0]["namespace"] == "postgres://10.0.0.5:5432"
    failed = json.loads(Serde.to_json(task_event(
        "FAIL", "p", "r1", "t", 1, error=f"WHERE email = 'ann@example.com' AND key = '{SECRET}'")))
    message = failed["run"]["facets"]["errorMessage"]["message"]
    assert "ann@example.com" not in message and SECRET not in message and MASK in message
