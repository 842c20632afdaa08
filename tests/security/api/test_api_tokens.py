"""Tokens an attacker would forge or stretch, against ``udop serve`` with an issuer and audience set."""

from __future__ import annotations

import time
from typing import Any

import pytest


def _me(served: Any, bearer: str) -> Any:
    return served.client(None, bearer=bearer).get("/me")


@pytest.mark.parametrize(
    ("case", "claims", "why"),
    [
        ("wrong issuer", {"iss": "https://evil.example"}, "issuer"),
        ("no issuer", {"omit": ("iss",)}, "iss"),
        ("wrong audience", {"aud": "some-other-service"}, "audience"),
        ("no audience", {"omit": ("aud",)}, "aud"),
        ("100-year lifetime", {"ttl": 100 * 365 * 86400}, "at most 86400"),
        ("no iat", {"omit": ("iat",)}, "iat"),
        ("issued in the future", {"iat": int(time.time()) + 3600, "ttl": 600}, "iat"),
        ("expired beyond the leeway", {"iat": int(time.time()) - 900, "ttl": 600}, "expired"),
        ("signed with a guessed secret", {"secret": "x" * 40}, "signature"),
    ],
)
def test_an_hs256_token_that_does_not_fit_this_server_is_refused_and_audited(
    served: Any, helpers: Any, case: str, claims: dict[str, Any], why: str
) -> None:
    start = served.last_audit_id()
    forged = helpers.token("admin", sub=f"forger-{case}", **claims)
    answer = _me(served, forged)
    assert answer.status_code == 401, (case, answer.text)
    assert why.lower() in answer.json()["detail"].lower()
    rows = served.audit_since(start)
    assert [(r["status"], r["outcome"], r["actor"], r["path"]) for r in rows] == [
        (401, "unauthenticated", "anonymous", "/me")
    ]
    assert f"forger-{case}" in rows[0]["detail"]  # who it claimed to be, for the investigator
    # and it cannot do what an admin does
    keys = served.client(None, bearer=forged).post("/api-keys", json={"name": "x", "role": "admin"})
    assert keys.status_code == 401


def test_a_token_fitting_this_server_is_accepted_within_the_clock_skew(served: Any, helpers: Any) -> None:
    assert _me(served, helpers.token("viewer")).json()["role"] == "viewer"
    # expired 10 s ago: within the 30 s leeway a drifting clock needs
    late = helpers.token("viewer", iat=int(time.time()) - 610, ttl=600)
    assert _me(served, late).status_code == 200
    # a day exactly is the default maximum
    assert _me(served, helpers.token("viewer", ttl=86400)).status_code == 200


def test_an_operator_cannot_make_itself_admin(served: Any) -> None:
    start = served.last_audit_id()
    operator = served.client("operator")
    assert operator.post("/api-keys", json={"name": "mine", "role": "admin"}).status_code == 403
    assert operator.get("/audit").status_code == 403
    rows = served.audit_since(start)
    assert [(r["status"], r["outcome"], r["role"]) for r in rows] == [
        (403, "denied", "operator"),
        (403, "denied", "operator"),
    ]
