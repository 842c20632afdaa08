"""Authentication and roles over real HTTP, and the audit log they write.

RS256 tokens are checked against a JWKS served by a real HTTP server on 127.0.0.1, with keys made in
the test, as Cognito or any OIDC issuer would serve them.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from .conftest import Api, bearer, make_token


def _audit_since(api: Api, start: int) -> list[dict[str, Any]]:
    return [r for r in api.audit_rows() if r["id"] > start]


def _last_id(api: Api) -> int:
    rows = api.audit_rows()
    return rows[-1]["id"] if rows else 0


@pytest.mark.parametrize(
    ("case", "headers", "reason"),
    [
        ("no token", {}, "no credentials"),
        (
            "bad signature",
            bearer(make_token("admin", secret="another-secret-" + "x" * 40)),
            "signature is invalid",
        ),
        ("expired", bearer(make_token("admin", ttl=-60)), "expired"),
        ("not a JWT", bearer("abc.def"), "malformed"),
        ("basic auth", {"Authorization": "Basic YWxpY2U6cGFzcw=="}, "Bearer"),
        (
            "unsigned",
            bearer(
                jwt.encode({"sub": "eve", "role": "admin", "exp": time.time() + 60}, None, algorithm="none")
            ),
            "not accepted",
        ),
        ("unknown API key", {"X-API-Key": "udop_0123456789ab_" + "z" * 43}, "invalid or revoked"),
    ],
)
def test_bad_credentials_are_401_and_audited(
    api: Api, case: str, headers: dict[str, str], reason: str
) -> None:
    start = _last_id(api)
    with httpx.Client(base_url=api.url, headers=headers) as c:
        r = c.get("/runs")
        assert r.status_code == 401, case
        assert reason in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        # a mutating call is refused the same way and nothing is registered
        assert (
            c.post("/pipelines", content="x", headers={"Content-Type": "application/yaml"}).status_code == 401
        )
    rows = _audit_since(api, start)
    assert [(r["method"], r["path"], r["status"], r["outcome"], r["actor"]) for r in rows] == [
        ("GET", "/runs", 401, "unauthenticated", "anonymous"),
        ("POST", "/pipelines", 401, "unauthenticated", "anonymous"),
    ]
    assert reason in rows[0]["detail"]
    # who the refused credentials claimed to be is kept for investigation, marked unverified
    claimed = {
        "bad signature": "alice",
        "expired": "alice",
        "unsigned": "eve",
        "unknown API key": "apikey:0123456789ab",
    }.get(case)
    if claimed:
        assert f"claimed {claimed!r}, unverified" in rows[0]["detail"]
    else:
        assert "claimed" not in rows[0]["detail"]
    assert rows[0]["action"] == "list_runs"
    assert rows[0]["client"] == "127.0.0.1"
    assert api.client("viewer").get("/pipelines").json() == []


def test_roles_are_enforced_per_endpoint_and_refusals_audited(api: Api) -> None:
    definition = api.definition("roles", [api.task("a", "maybe_fail")])
    viewer, operator, admin = api.client("viewer", sub="vic"), api.client("operator"), api.client("admin")
    nobody = api.client("", sub="nobody")  # no role claim at all
    nobody.headers.update(bearer(make_token(None, sub="nobody")))

    start = _last_id(api)
    assert api.register(definition, viewer).status_code == 403
    rows = _audit_since(api, start)
    assert len(rows) == 1
    assert rows[0]["actor"] == "vic"
    assert rows[0]["role"] == "viewer"
    assert rows[0]["status"] == 403
    assert rows[0]["outcome"] == "denied"
    assert "operator" in rows[0]["detail"]

    assert nobody.get("/pipelines").status_code == 403
    assert nobody.get("/me").json() == {"subject": "nobody", "role": None, "kind": "jwt"}

    assert api.register(definition, operator).status_code == 201
    assert viewer.get("/pipelines/roles").status_code == 200
    assert viewer.post("/pipelines/roles/runs").status_code == 403
    assert operator.delete("/pipelines/roles").status_code == 403
    assert operator.get("/audit").status_code == 403
    assert operator.get("/api-keys").status_code == 403
    assert operator.post("/api-keys", json={"name": "svc", "role": "viewer"}).status_code == 403
    assert admin.get("/audit").status_code == 200

    refused = [r for r in _audit_since(api, start) if r["status"] == 403]
    assert {(r["method"], r["path"]) for r in refused} >= {
        ("POST", "/pipelines/roles/runs"),
        ("DELETE", "/pipelines/roles"),
        ("GET", "/audit"),
        ("POST", "/api-keys"),
        ("GET", "/pipelines"),
    }


def test_every_mutating_call_is_audited_and_admins_read_the_log_over_the_api(api: Api) -> None:
    operator = api.client("operator", sub="olga")
    assert api.register(api.definition("audited", [api.task("a", "maybe_fail")]), operator).status_code == 201
    run_id = operator.post("/pipelines/audited/runs").json()["run_id"]
    api.wait_for_run(run_id, {"succeeded", "failed"})
    assert (
        operator.post(
            "/pipelines", content="kind: Nope", headers={"Content-Type": "application/yaml"}
        ).status_code
        == 422
    )
    api.client("viewer").get("/runs")  # reads are not audited

    admin = api.client("admin", sub="ada")
    page = admin.get("/audit", params={"actor": "olga"}).json()
    got = [(i["action"], i["status"], i["outcome"]) for i in page["items"]]
    assert got == [
        ("register_pipeline", 422, "rejected"),
        ("trigger_run", 202, "success"),
        ("register_pipeline", 201, "success"),
    ]  # newest first
    trigger = page["items"][1]
    assert run_id in trigger["detail"]
    assert trigger["role"] == "operator"
    assert trigger["actor_kind"] == "jwt"

    # cursor pagination of the log, one row a page, gives the same rows
    seen, cursor = [], None
    while True:
        body = admin.get(
            "/audit", params={"actor": "olga", "limit": 1, **({"cursor": cursor} if cursor else {})}
        ).json()
        seen += [i["id"] for i in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == [i["id"] for i in page["items"]]
    denied = admin.get("/audit", params={"outcome": "rejected"}).json()["items"]
    assert [i["action"] for i in denied] == ["register_pipeline"]


def test_api_keys_are_shown_once_stored_hashed_scoped_by_role_and_revocable(api: Api) -> None:
    admin = api.client("admin", sub="ada")
    created = admin.post("/api-keys", json={"name": "airflow-prod", "role": "operator"})
    assert created.status_code == 201
    body = created.json()
    key = body["key"]
    assert key.startswith(f"udop_{body['id']}_")
    listed = admin.get("/api-keys").json()
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0]

    from sqlalchemy import select

    from udop.api.keys import api_keys_table

    with api.engine.connect() as conn:
        row = conn.execute(select(api_keys_table)).mappings().one()
    secret = key.split("_", 2)[2]
    assert secret not in json.dumps({k: str(v) for k, v in row.items()})
    import hashlib

    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()

    start = _last_id(api)
    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}) as svc:
        assert svc.get("/me").json() == {
            "subject": f"apikey:{body['id']}",
            "role": "operator",
            "kind": "api_key",
        }
        assert api.register(api.definition("by-key", [api.task("a", "maybe_fail")]), svc).status_code == 201
        assert svc.get("/audit").status_code == 403
    with httpx.Client(base_url=api.url, headers=bearer(key)) as svc2:  # also as a bearer token
        assert svc2.get("/pipelines").status_code == 200
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    with httpx.Client(base_url=api.url, headers={"X-API-Key": wrong}) as bad:
        assert bad.get("/pipelines").status_code == 401
    rows = _audit_since(api, start)
    assert ("register_pipeline", f"apikey:{body['id']}", "api_key") in {
        (r["action"], r["actor"], r["actor_kind"]) for r in rows
    }

    assert admin.delete(f"/api-keys/{body['id']}").status_code == 204
    with httpx.Client(base_url=api.url, headers={"X-API-Key": key}) as revoked:
        r = revoked.get("/pipelines")
        assert r.status_code == 401
        assert "revoked" in r.json()["detail"]
    assert admin.delete(f"/api-keys/{body['id']}").status_code == 404
    assert admin.post("/api-keys", json={"name": "x", "role": "superuser"}).status_code == 422


# --------------------------------------------------------------------------- RS256 against a JWKS


class JwksServer:
    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200 if self.path == "/.well-known/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_test"


@pytest.fixture
def oidc(api_factory: Callable[..., Api]) -> Iterator[tuple[Api, rsa.RSAPrivateKey, JwksServer]]:
    key = _rsa()
    server = JwksServer([_jwk(key, "k1")])
    api = api_factory(
        jwks_url=server.url, jwt_issuer=ISSUER, jwt_audience="udop-api", jwks_refresh_cooldown=0
    )
    yield api, key, server
    server.close()


def _rs256(key: rsa.RSAPrivateKey, kid: str = "k1", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "carol", "iss": ISSUER, "aud": "udop-api", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


def test_rs256_tokens_verified_against_the_issuers_jwks(
    oidc: tuple[Api, rsa.RSAPrivateKey, JwksServer],
) -> None:
    api, key, server = oidc
    start = _last_id(api)

    def call(token: str) -> httpx.Response:
        with httpx.Client(base_url=api.url, headers=bearer(token)) as c:
            return c.get("/me")

    ok = call(_rs256(key, **{"cognito:groups": ["udop-operator", "other"]}))
    assert ok.status_code == 200
    assert ok.json() == {"subject": "carol", "role": "operator", "kind": "jwt"}
    assert server.hits >= 1
    assert call(_rs256(key, role="admin")).json()["role"] == "admin"

    # signed by a key the issuer does not publish, under a published kid: bad signature
    assert call(_rs256(_rsa(), kid="k1", role="admin")).status_code == 401
    # an unknown kid: the key set is refetched, still not there
    hits = server.hits
    unknown = call(_rs256(_rsa(), kid="k2", role="admin"))
    assert unknown.status_code == 401
    assert "not in the issuer's key set" in unknown.json()["detail"]
    assert server.hits == hits + 1
    assert call(_rs256(key, role="admin", iss="https://evil.example")).status_code == 401
    assert call(_rs256(key, role="admin", aud="someone-else")).status_code == 401
    assert call(_rs256(key, role="admin", exp=int(time.time()) - 30)).status_code == 401

    # key rotation: a new key published under a new kid is picked up without a restart
    new = _rsa()
    server.keys.append(_jwk(new, "k3"))
    assert call(_rs256(new, kid="k3", role="viewer")).json()["role"] == "viewer"

    # an HS256 token is still accepted alongside (the local secret is configured too), when it names
    # this deployment's issuer and audience like any other token
    assert call(make_token("viewer", iss=ISSUER, aud="udop-api")).status_code == 200
    refused = [r for r in _audit_since(api, start) if r["status"] == 401]
    assert len(refused) == 5
    assert all(r["path"] == "/me" and r["actor"] == "anonymous" for r in refused)
    assert call(make_token("viewer")).status_code == 401


def test_an_unreachable_issuer_is_503_not_a_silent_pass_and_is_audited(
    api_factory: Callable[..., Api],
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}/jwks.json"  # bound, never listening: refused
    api = api_factory(jwks_url=dead)
    try:
        token = _rs256(_rsa(), iss=ISSUER, aud="udop-api", role="admin")
        with httpx.Client(base_url=api.url, headers=bearer(token)) as c:
            r = c.get("/runs")
        assert r.status_code == 503
        assert "JWKS" in r.json()["detail"]
        row = api.audit_rows()[-1]
        assert (row["path"], row["status"], row["outcome"], row["actor"]) == (
            "/runs",
            503,
            "error",
            "anonymous",
        )
    finally:
        sock.close()
