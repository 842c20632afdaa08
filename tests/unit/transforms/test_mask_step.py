"""The ``mask`` step: masked columns in the published data, salted hashes, validate-time errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from transform_helpers import make_pipeline

from udop.errors import FatalError
from udop.sandbox import MASK
from udop_transforms import check_pipeline

PEOPLE = pa.table({
    "id": [1, 2, 3],
    "email": ["ann@example.com", "bob@example.org", None],
    "card": ["4111111111111111", "5500005555555559", "12"],
    "name": ["Ann", "Bob", None],
})


@pytest.fixture
def src(tmp_path: Path) -> Path:
    pq.write_table(PEOPLE, tmp_path / "people.parquet")
    return tmp_path


def _tasks(mask: dict) -> list[dict]:
    return [
        {"id": "people", "type": "extract", "source": {"connector": "parquet", "path": "people.parquet"}},
        {"id": "t", "type": "transform", "depends_on": "people", "steps": [{"mask": mask}]},
    ]


def _out(run, mask: dict) -> dict:
    results = run(_tasks(mask))
    out = results["t"].output
    assert out is not None
    return pq.read_table(Path(out.uri) / "part-0.parquet").to_pydict()


def test_hash_redact_and_keep_last_mask_the_published_rows(run, src, monkeypatch):
    monkeypatch.setenv("UDOP_TEST_SALT", "pepper-123")
    data = _out(run, {"columns": {"email": "hash", "name": "redact", "card": {"keep_last": 4}},
                      "salt": {"env": "UDOP_TEST_SALT"}})
    assert data["id"] == [1, 2, 3]
    assert data["email"] == [hashlib.sha256(b"pepper-123" + e.encode()).hexdigest()
                             for e in ("ann@example.com", "bob@example.org")] + [None]
    assert data["name"] == [MASK, MASK, None]
    assert data["card"] == ["************1111", "************5559", "12"]
    assert not any("example" in str(v) for v in data["email"])


def test_the_hash_depends_on_the_salt(run, src, monkeypatch):
    monkeypatch.setenv("UDOP_TEST_SALT", "one")
    first = _out(run, {"columns": {"email": "hash"}, "salt": {"env": "UDOP_TEST_SALT"}})["email"]
    monkeypatch.setenv("UDOP_TEST_SALT", "two")
    second = _out(run, {"columns": {"email": "hash"}, "salt": {"env": "UDOP_TEST_SALT"}})["email"]
    assert first[0] != second[0]
    assert first[0] != hashlib.sha256(b"ann@example.com").hexdigest()


def test_hash_without_a_salt_is_refused_in_the_definition():
    with pytest.raises(ValidationError, match="is hashed: give a salt"):
        make_pipeline(_tasks({"columns": {"email": "hash"}}))
    with pytest.raises(ValidationError, match="salt is a secret reference"):
        make_pipeline(_tasks({"columns": {"email": "hash"}, "salt": {"value": "x"}}))
    with pytest.raises(ValidationError):
        make_pipeline(_tasks({"columns": {"email": "scramble"}}))


def test_unknown_column_is_a_one_line_validate_error(src):
    errors = check_pipeline(make_pipeline(_tasks({"columns": {"emial": "redact"}})), src)
    assert len(errors) == 1
    assert errors[0].path == "spec.tasks[1].steps[0]"
    text = str(errors[0])
    assert "mask step" in text and "emial" in text and "\n" not in text


def test_validate_does_not_need_the_salt(src, monkeypatch):
    monkeypatch.delenv("UDOP_TEST_SALT", raising=False)
    p = make_pipeline(_tasks({"columns": {"email": "hash"}, "salt": {"env": "UDOP_TEST_SALT"}}))
    assert check_pipeline(p, src) == []


def test_a_missing_salt_at_run_time_fails_the_task(run, src, monkeypatch):
    monkeypatch.delenv("UDOP_TEST_SALT", raising=False)
    with pytest.raises(FatalError, match="UDOP_TEST_SALT"):
        run(_tasks({"columns": {"email": "hash"}, "salt": {"env": "UDOP_TEST_SALT"}}))
