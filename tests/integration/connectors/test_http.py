"""HTTP and GraphQL connectors against a real HTTP server on 127.0.0.1 (stdlib, in a thread)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from udop.connectors import get_connector
from udop.errors import ConnectionFailed, FatalError

ITEMS = [{"id": i, "name": f"item-{i}", "price": i * 1.25} for i in range(1, 24)]


class Api(BaseHTTPRequestHandler):
    hits: dict[str, list[float]] = {}
    posted: list[Any] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        Api.hits.setdefault(url.path, []).append(time.monotonic())
        n = len(Api.hits[url.path])
        if url.path == "/pages":  # page-number pagination, an empty page ends it
            page = int(q.get("page", 1))
            self._send(200, {"data": {"items": ITEMS[(page - 1) * 10 : page * 10]}})
        elif url.path == "/offset":
            off, lim = int(q["offset"]), int(q["limit"])
            self._send(200, {"results": ITEMS[off : off + lim]})
        elif url.path == "/cursor":
            start = int(q.get("cursor", 0))
            nxt = start + 7 if start + 7 < len(ITEMS) else None
            self._send(200, {"items": ITEMS[start : start + 7], "meta": {"next": nxt}})
        elif url.path == "/link":
            start = int(q.get("from", 0))
            headers = {}
            if start + 10 < len(ITEMS):
                port = self.server.server_address[1]
                headers["Link"] = f'<http://127.0.0.1:{port}/link?from={start + 10}>; rel="next"'
            self._send(200, ITEMS[start : start + 10], headers)
        elif url.path == "/flaky":  # two 503s, then the data
            if n <= 2:
                self._send(503, {"error": "busy"})
            else:
                self._send(200, ITEMS[:3])
        elif url.path == "/limited":  # one 429 asking for a 1 s pause
            if n == 1:
                self._send(429, {"error": "slow down"}, {"Retry-After": "1"})
            else:
                self._send(200, ITEMS[:2])
        elif url.path == "/down":
            self._send(500, {"error": "boom"})
        elif url.path == "/html":
            self._send(200, "<!doctype html><html><body>Login</body></html>", content_type="text/html")
        elif url.path == "/secure":
            auth = self.headers.get("Authorization", "")
            ok = (
                auth == "Bearer tok-123"
                or auth == "Basic " + base64.b64encode(b"ann:pw-456").decode()
                or self.headers.get("X-Key") == "key-789"
                or q.get("api_key") == "key-789"
            )
            if ok:
                self._send(200, ITEMS[:1])
            else:
                self._send(401, {"error": "who are you"})
        else:
            self._send(404, {"error": "no"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if url.path == "/graphql":
            after = int(body["variables"].get("after") or 0)
            if "broken" in body["query"]:
                self._send(200, {"errors": [{"message": "Cannot query field 'broken'"}]})
                return
            nodes = ITEMS[after : after + 5]
            end = after + len(nodes)
            self._send(
                200,
                {
                    "data": {
                        "shop": {
                            "items": {
                                "nodes": nodes,
                                "pageInfo": {"hasNextPage": end < len(ITEMS), "endCursor": str(end)},
                            }
                        }
                    }
                },
            )
        elif url.path == "/ingest":
            Api.posted.append(body)
            self._send(201, {"ok": True})
        else:
            self._send(404, {})


@pytest.fixture
def api() -> Iterator[str]:
    Api.hits, Api.posted = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


FAST = {"attempts": 3, "base_delay": 0.01}


def read(spec: dict[str, Any]) -> list[dict[str, Any]]:
    with get_connector(spec) as c:
        return [r for b in c.read() for r in b.to_pylist()]


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/pages", {"records": "data.items", "pagination": {"type": "page"}}),
        ("/offset", {"records": "$.results", "pagination": {"type": "offset", "page_size": 5}}),
        ("/cursor", {"records": "items", "pagination": {"type": "cursor", "cursor_path": "meta.next"}}),
        ("/link", {"pagination": {"type": "link"}}),
    ],
)
def test_every_pagination_style_reads_all_records_once(api: str, path: str, extra: dict[str, Any]) -> None:
    assert read({"connector": "http", "url": api + path, **extra}) == ITEMS


def test_retries_5xx_then_succeeds(api: str) -> None:
    assert read({"connector": "http", "url": api + "/flaky", "retry": FAST}) == ITEMS[:3]
    assert len(Api.hits["/flaky"]) == 3


def test_429_waits_as_long_as_retry_after_says(api: str) -> None:
    assert read({"connector": "http", "url": api + "/limited", "retry": FAST}) == ITEMS[:2]
    first, second = Api.hits["/limited"]
    assert second - first >= 0.95  # the server asked for 1 s; our own backoff would be 10 ms


def test_persistent_5xx_is_retryable_and_named(api: str) -> None:
    connections = {"shop": {"connector": "http", "url": api + "/down", "retry": FAST}}
    with (
        get_connector({"connection": "shop"}, connections=connections) as c,
        pytest.raises(ConnectionFailed, match=r"^connection 'shop' \(http\): GET .*/down: HTTP 500 after 3"),
    ):
        list(c.read())


def test_html_instead_of_json_is_one_clear_fatal_line(api: str) -> None:
    with pytest.raises(FatalError) as info:
        read({"connector": "http", "url": api + "/html"})
    message = str(info.value)
    assert "returned text/html, not JSON" in message
    assert "'<!doctype html><html><body>Login</body></html>'" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "auth",
    [
        {"type": "bearer", "token": "tok-123"},
        {"type": "basic", "username": "ann", "password": "pw-456"},
        {"type": "api_key", "name": "X-Key", "value": "key-789"},
        {"type": "api_key", "name": "api_key", "value": "key-789", "in": "query"},
    ],
)
def test_auth_styles(api: str, auth: dict[str, Any]) -> None:
    assert read({"connector": "http", "url": api + "/secure", "auth": auth}) == ITEMS[:1]


def test_wrong_credentials_are_fatal_and_do_not_leak(api: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDOP_TEST_API_TOKEN", "wrong-token-000")
    spec = {
        "connector": "http",
        "url": api + "/secure",
        "auth": {
            "type": "api_key",
            "name": "api_key",
            "value": {"env": "UDOP_TEST_API_TOKEN"},
            "in": "query",
        },
    }
    with pytest.raises(FatalError, match="HTTP 401 Unauthorized \\(check the credentials\\)") as info:
        read(spec)
    assert "wrong-token-000" not in str(info.value)


def test_unreachable_server_is_retryable() -> None:
    with pytest.raises(ConnectionFailed, match="cannot reach the server"):
        read({"connector": "http", "url": "http://127.0.0.1:1/x", "retry": FAST, "timeout": 2})


def test_columns_fix_types_and_drop_other_fields(api: str) -> None:
    rows = read(
        {
            "connector": "http",
            "url": api + "/link",
            "pagination": {"type": "link"},
            "columns": {"id": "int", "price": "decimal(10,2)"},
        }
    )
    assert [str(r["price"]) for r in rows[:2]] == ["1.25", "2.50"]
    assert set(rows[0]) == {"id", "price"}


def test_graphql_cursor_pagination(api: str) -> None:
    spec = {
        "connector": "graphql",
        "url": api + "/graphql",
        "query": "query($after: String) { shop { items(after: $after) { nodes { id name price } } } }",
        "records": "data.shop.items.nodes",
        "page_info": "data.shop.items.pageInfo",
    }
    assert read(spec) == ITEMS
    with pytest.raises(FatalError, match="GraphQL error: Cannot query field 'broken'"):
        read({**spec, "query": "{ broken }"})


def test_write_posts_json_chunks(api: str) -> None:
    import pyarrow as pa

    batch = pa.RecordBatch.from_pylist(ITEMS)
    with get_connector({"connector": "http", "url": api + "/ingest", "write_batch": 10}) as c:
        assert c.write([batch]) == len(ITEMS)
    assert [len(chunk) for chunk in Api.posted] == [10, 10, 3]
    assert [r for chunk in Api.posted for r in chunk] == ITEMS
