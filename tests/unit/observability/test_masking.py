"""The redactor's PII detectors, the UDOP_MASK_PII switch, and a definition's spec.masking."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from udop.masking import apply_setting, iban_ok, luhn_ok
from udop.sandbox import MASK, Redactor, redactor


def _pii() -> Redactor:
    from udop.masking import install_detectors

    r = Redactor()
    install_detectors(r)
    return r


PII = _pii()


@pytest.fixture
def pii() -> Redactor:
    return PII


def luhn_complete(body: str) -> str:
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


emails = st.builds(
    lambda user, host, tld: f"{user}@{host}.{tld}",
    st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,15}", fullmatch=True),
    st.from_regex(r"[a-z0-9][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True),
    st.sampled_from(["com", "org", "ch", "io", "co.uk"]),
)
def _card(prefix: str, rest: str, spaced: bool) -> str:
    number = luhn_complete(prefix + rest)
    return " ".join(number[i:i + 4] for i in range(0, len(number), 4)) if spaced else number


cards = st.builds(
    _card,
    st.sampled_from(["4", "51", "55", "37", "6011"]),
    st.from_regex(r"[0-9]{11}", fullmatch=True),
    st.booleans(),
)
filler = st.text(alphabet=st.characters(codec="ascii", categories=["L", "Zs"]), max_size=20)


@settings(max_examples=200, deadline=None)
@given(emails, cards, filler, filler)
def test_emails_and_cards_are_masked_wherever_they_sit_in_text(email, card, before, after):
    text = f"{before} {email} paid with {card}{after}"
    clean = PII.redact(text)
    assert email not in clean
    assert card not in clean
    assert card.replace(" ", "") not in clean.replace(" ", "")
    assert MASK in clean


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("caller +41 44 668 18 00 rang", "+41 44 668 18 00"),
        ("call (555) 123-4567 now", "(555) 123-4567"),
        ("iban CH93 0076 2011 6238 5295 7 ok", "CH93 0076 2011 6238 5295 7"),
        ("iban GB82WEST12345698765432", "GB82WEST12345698765432"),
        ("from 192.168.10.7 port", "192.168.10.7"),
        ("from 2001:db8::8a2e:370:7334 port", "2001:db8::8a2e:370:7334"),
        ("key AKIAIOSFODNN7EXAMPLE used", "AKIAIOSFODNN7EXAMPLE"),
        ("bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.sig-nature_x", "eyJhbGciOiJIUzI1NiJ9"),
    ],
)
def test_each_builtin_detector_masks_its_kind(pii, text, hidden):
    clean = pii.redact(text)
    assert hidden not in clean
    assert MASK in clean


@pytest.mark.parametrize(
    "text",
    [
        "run 20241130T064215-ab12 took 12.5s at 06:42:15",
        "loaded 4111111111111112 rows",  # fails the Luhn check: not a card
        "date 2024-11-30, 1234567 rows, version 1.2.3",
        "iban CH94 0076 2011 6238 5295 7",  # wrong checksum
        "ratio 10:20:30",
    ],
)
def test_ordinary_text_is_left_alone(pii, text):
    assert pii.redact(text) == text


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE88 3704 0044 0532 0130 00")


@pytest.mark.parametrize(
    ("switch", "server", "on"),
    [("auto", True, True), ("auto", False, False), ("off", True, False), ("on", False, True)],
)
def test_udop_mask_pii_switch(monkeypatch, switch, server, on):
    monkeypatch.setenv("UDOP_MASK_PII", switch)
    target = Redactor()
    assert apply_setting(server=server, target=target) is on
    assert (target.redact("mail ann@example.com") == f"mail {MASK}") is on


def test_a_bad_switch_is_a_one_line_config_error(monkeypatch):
    from udop.errors import ConfigError

    monkeypatch.setenv("UDOP_MASK_PII", "maybe")
    with pytest.raises(ConfigError, match="UDOP_MASK_PII"):
        apply_setting(server=True, target=Redactor())


def test_a_server_policy_turns_the_detectors_on(tmp_path, monkeypatch):
    from udop.sandbox import server_policy

    monkeypatch.delenv("UDOP_MASK_PII", raising=False)
    assert "ann@example.com" in redactor.redact("ann@example.com")
    server_policy(data_root=str(tmp_path))
    assert redactor.redact("ann@example.com") == MASK


def test_spec_masking_patterns_and_columns_reach_check_samples(tmp_path: Path):
    from udop.spec.models import Pipeline
    from udop.tasks import TaskContext, run_task

    pq.write_table(pa.table({"cid": ["CUST-1234", "CUST-9876"], "name": ["Ann Lee", "Bo Kim"],
                             "status": ["bad", "bad"]}), tmp_path / "c.parquet")
    pipeline = Pipeline.model_validate({
        "apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "m"},
        "spec": {
            "masking": {"patterns": [r"CUST-\d+"], "columns": ["Name"]},
            "tasks": [
                {"id": "c", "type": "extract", "source": {"connector": "parquet", "path": "c.parquet"}},
                {"id": "v", "type": "validate", "depends_on": "c",
                 "rules": [{"accepted_values": {"column": "status", "values": ["ok"]}, "severity": "warn"}]},
            ],
        },
    })
    results = {}
    for task in pipeline.spec.tasks:
        ctx = TaskContext(pipeline=pipeline, task_id=task.id, run_id="r1", attempt=1,
                          logical_date=__import__("datetime").datetime(2024, 1, 2), params={},
                          data_root=str(tmp_path / "data"), services={"base_dir": str(tmp_path)})
        results[task.id] = run_task(ctx, task, {d: results[d] for d in task.depends_on})
    check = results["v"].checks[0]
    assert not check.passed and check.sample
    assert all(row["name"] == MASK for row in check.sample)
    assert all(row["status"] == "bad" for row in check.sample)  # other columns stay readable
    assert "CUST-" not in repr(check.sample)
    # the scope ends with the task: the process's redactor does not keep the pipeline's pattern
    assert redactor.redact("CUST-1234") == "CUST-1234"


def test_the_spec_masking_block_is_validated():
    from pydantic import ValidationError

    from udop.spec.models import MaskingSpec

    with pytest.raises(ValidationError, match=r"patterns\[0\] is not a regular expression"):
        MaskingSpec(patterns=["(unclosed"])
    with pytest.raises(ValidationError, match="matches the empty string"):
        MaskingSpec(patterns=["x*"])
