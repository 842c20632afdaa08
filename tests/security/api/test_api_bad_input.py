"""Hostile bodies, paths, queries and cursors against ``udop serve``: each is refused with a one-line 4xx,
audited, and the server stays up, logs no traceback and shows nothing it should not."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _one_line(answer: Any) -> str:
    detail = answer.json()["detail"]
    assert "\n" not in detail and "Traceback" not in answer.text
    return str(detail)


def _head(method: str, path: str, length: int, token: str | None = None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: test",
        "Content-Type: application/yaml",
        f"Content-Length: {length}",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_yaml_nested_500_deep_is_a_located_422_not_a_500(served: Any) -> None:
    start = served.last_audit_id()
    text = (
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: deep}\nspec:\n  tasks: "
        + "[" * 500
        + "]" * 500
    )
    answer = served.client("operator").post(
        "/pipelines", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert answer.status_code == 422
    assert "nested more than 100 levels" in _one_line(answer)
    assert answer.json()["errors"][0]["line"] == 5
    rows = served.audit_since(start)
    assert [(r["status"], r["outcome"], r["action"]) for r in rows] == [
        (422, "rejected", "register_pipeline")
    ]


def test_json_nested_500_deep_is_a_422(served: Any) -> None:
    text = '{"apiVersion": "udop/v1", "kind": "Pipeline", "spec": {"x": ' + "[" * 500 + "]" * 500 + "}}"
    answer = served.client("operator").post(
        "/pipelines", content=text, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422
    assert "nested more than 100 levels" in _one_line(answer)


def test_a_yaml_list_of_millions_of_items_is_refused_at_the_value_limit(served: Any) -> None:
    text = (
        "apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: big}\nspec:\n  tasks: ["
        + "1," * 4_800_000
        + "]\n"
    )
    assert len(text) > 9_500_000
    answer = served.client("operator").post(
        "/pipelines", content=text, headers={"Content-Type": "application/yaml"}
    )
    assert answer.status_code == 422
    assert "more than 200000 values" in _one_line(answer)
    assert served.client(None).get("/health").status_code == 200


def test_an_alias_bomb_is_refused(served: Any) -> None:
    lines = [
        "apiVersion: udop/v1",
        "kind: Pipeline",
        "metadata: {name: bomb}",
        "a0: &a0 [x, x, x, x, x, x, x, x, x]",
    ]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 10)
    ]
    answer = served.client("operator").post(
        "/pipelines", content="\n".join(lines), headers={"Content-Type": "application/yaml"}
    )
    assert answer.status_code == 422
    assert "200000" in _one_line(answer)


def test_a_declared_oversized_body_is_413_before_a_byte_of_it_is_read(served: Any) -> None:
    start = served.last_audit_id()
    # headers only: a server that waited for the 50 MB would never answer
    answer = served.raw(_head("POST", "/pipelines", 50 * 1024 * 1024), wait=20)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"at most 10485760 bytes" in answer
    rows = served.audit_since(start)
    assert [(r["status"], r["path"], r["actor"]) for r in rows] == [(413, "/pipelines", "anonymous")]


def test_an_unauthenticated_body_is_refused_before_it_is_read(served: Any, helpers: Any) -> None:
    start = served.last_audit_id()
    for path in ("/pipelines", "/pipelines/x/runs", "/api-keys"):
        answer = served.raw(_head("POST", path, 5 * 1024 * 1024), wait=20)
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    forged = helpers.token("admin", secret="y" * 40)
    answer = served.raw(_head("POST", "/pipelines", 5 * 1024 * 1024, forged), wait=20)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    rows = served.audit_since(start)
    assert [(r["status"], r["outcome"]) for r in rows] == [(401, "unauthenticated")] * 4


def test_a_streamed_body_is_cut_at_the_limit(served: Any) -> None:
    start = served.last_audit_id()

    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # 64 MiB offered, chunked: no Content-Length to refuse up front
            yield b"#" * (1024 * 1024)

    try:
        status: int | None = (
            served.client("operator")
            .post("/pipelines", content=chunks(), headers={"Content-Type": "application/yaml"})
            .status_code
        )
    except httpx.TransportError:
        status = None  # the server answered 413 and hung up while the client was still sending
    assert status in (413, None)
    rows = served.audit_since(start)
    assert [(r["status"], r["path"]) for r in rows] == [(413, "/pipelines")]


@pytest.mark.parametrize(
    ("path", "role"),
    [
        ("/pipelines/a%00b", "viewer"),
        ("/runs/%00", None),
        ("/runs/x%01y/checks", "viewer"),
        ("/runs?pipeline=a%00", "viewer"),
        ("/audit?actor=%00admin", "admin"),
        ("/pipelines/%00", None),
    ],
)
def test_a_control_character_in_the_path_or_query_is_400_and_audited(
    served: Any, path: str, role: str | None
) -> None:
    start = served.last_audit_id()
    answer = served.client(role).get(path)
    assert answer.status_code == 400
    assert "control character" in _one_line(answer)
    rows = served.audit_since(start)
    assert len(rows) == 1 and rows[0]["status"] == 400
    assert "\x00" not in rows[0]["path"] and "\x01" not in rows[0]["path"]
    assert rows[0]["path"].startswith(path.split("?", maxsplit=1)[0].split("%", maxsplit=1)[0])


def test_a_mutating_call_with_nul_in_its_path_is_refused_and_audited(served: Any) -> None:
    start = served.last_audit_id()
    answer = served.client(None).post("/pipelines/x%00y/runs", json={})
    assert answer.status_code == 400
    rows = served.audit_since(start)
    assert [(r["status"], r["method"], r["path"]) for r in rows] == [(400, "POST", "/pipelines/x\\x00y/runs")]


def test_credentials_holding_nul_and_lone_surrogates_still_leave_an_audit_row(
    served: Any, helpers: Any
) -> None:
    start = served.last_audit_id()
    forged = helpers.token("admin", sub="eve\x00\ud800root", secret="z" * 40)
    answer = served.client(None, bearer=forged).get("/audit")
    assert answer.status_code == 401
    rows = served.audit_since(start)
    assert len(rows) == 1 and rows[0]["status"] == 401
    assert "eve\\x00\\ud800root" in rows[0]["detail"]


BAD_CURSORS = [
    _cursor(str(10**30).encode()),  # past any BIGINT
    _cursor(b"-5"),
    _cursor(b"\x00"),
    _cursor(b"\xed\xa0\x80"),  # a lone surrogate, UTF-8 encoded
    _cursor("é".encode()),
    "!!!not-base64!!!",
    "",
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_a_malformed_cursor_is_400_on_both_lists(served: Any, cursor: str) -> None:
    admin = served.client("admin")
    for path in ("/audit", "/runs"):
        answer = admin.get(path, params={"cursor": cursor} if cursor else {"cursor": "="})
        assert answer.status_code == 400, (path, cursor, answer.text)
        assert "cursor" in _one_line(answer)


@pytest.mark.parametrize(
    "url",
    [
        "/audit?limit=" + "9" * 40,
        "/runs?limit=" + "9" * 40,
        "/audit?limit=abc",
        "/runs?state=%ff%fe",
        "/audit?outcome=" + "x" * 500,
        "/runs?pipeline=" + "p" * 5000,
        "/runs/" + "r" * 5000,
        "/pipelines/%ff%fe%fd",
    ],
)
def test_malformed_parameters_are_4xx_never_5xx(served: Any, url: str) -> None:
    answer = served.client("admin").get(url)
    assert 400 <= answer.status_code < 500, (url, answer.text)
    _one_line(answer)


@pytest.mark.parametrize("value", ["\\u0000", "\\ud800", "a\\udfffb"])
def test_run_params_no_database_can_store_are_422(served: Any, helpers: Any, value: str) -> None:
    text = helpers.definition(
        f"params-{abs(hash(value))}",
        [{"id": "t", "type": "python", "callable": "sec_tasks:hello"}],
        params={"x": {"type": "str", "default": "a"}},
    )
    operator = served.client("operator")
    assert operator.post(
        "/pipelines", content=text, headers={"Content-Type": "application/yaml"}
    ).status_code in (200, 201)
    name = f"params-{abs(hash(value))}"
    body = '{"params": {"x": "' + value + '"}}'
    answer = operator.post(
        f"/pipelines/{name}/runs", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 422, answer.text
    assert "NUL" in _one_line(answer)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('apiVersion: udop/v1\nkind: Pipeline\nmetadata: {name: "a\\0b"}\nspec: {tasks: []}\n', "yaml"),
        (
            '{"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": "a\\ud800"}, "spec": {}}',
            "json",
        ),
    ],
)
def test_a_definition_holding_nul_or_a_surrogate_is_a_located_422(served: Any, text: str, kind: str) -> None:
    answer = served.client("operator").post(
        "/pipelines", content=text, headers={"Content-Type": f"application/{kind}"}
    )
    assert answer.status_code == 422, answer.text
    assert "NUL" in _one_line(answer)
    assert answer.json()["errors"][0]["path"] == "metadata.name"


def test_repeated_failed_authentication_is_429_with_retry_after(served: Any, helpers: Any) -> None:
    forged = helpers.token("admin", secret="w" * 40)
    attacker = served.client(None, bearer=forged)  # one client: one source address
    start = served.last_audit_id()
    for _ in range(helpers.FAILURE_LIMIT):
        assert attacker.get("/me").status_code == 401
    blocked = attacker.get("/me")
    assert blocked.status_code == 429
    assert 0 < int(blocked.headers["Retry-After"]) <= 600
    # even a right token from that client waits; /health does not; other clients are not affected
    good = {"Authorization": f"Bearer {helpers.token('viewer')}"}
    assert attacker.get("/me", headers=good).status_code == 429
    assert attacker.get("/health").status_code == 200
    assert served.client("viewer").get("/me").status_code == 200
    rows = served.audit_since(start)
    statuses = [r["status"] for r in rows if r["path"] == "/me"]
    assert statuses[: helpers.FAILURE_LIMIT] == [401] * helpers.FAILURE_LIMIT
    assert 429 in statuses
    assert json.dumps([r["detail"] for r in rows]).count(helpers.SECRET) == 0
