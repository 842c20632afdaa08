"""Every connector names what a run read from it and wrote into it, in a real run: a load into it
leaves a lineage row naming the target, an extract from it names the source, both in OpenLineage's
scheme and with no secret in them (loads into databases, queues, key spaces, APIs and ``local`` used
to leave no row, and sources were recorded as ``postgres:pg``)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from udop.executor.local import LocalExecutor
from udop.lineage import dataset_uri
from udop.spec.loader import load_pipeline
from udop.state.sqlite import SQLiteStateStore
from udop.store import open_store

SECRET = "lin-secret-never-shown"


@dataclass
class Case:
    target: dict[str, Any]
    source: dict[str, Any] | None  # None: the connector is not read back here
    target_uri: str
    source_uri: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def _pipeline(case: Case, src_csv: Path) -> str:
    tasks: list[dict[str, Any]] = [
        {"id": "seed", "type": "extract", "source": {"connector": "csv", "path": str(src_csv)}},
        {"id": "to_x", "type": "load", "depends_on": ["seed"], "target": case.target},
    ]
    if case.source is not None:
        tasks.append({"id": "from_x", "type": "extract", "depends_on": ["to_x"], "source": case.source})
    return json.dumps({"apiVersion": "udop/v1", "kind": "Pipeline",
                       "metadata": {"name": f"lin-{uuid.uuid4().hex[:6]}"}, "spec": {"tasks": tasks}})


class _Api(BaseHTTPRequestHandler):
    """Keeps what is POSTed to /items and returns it on GET; /graphql answers one page."""

    items: list[Any] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, _Api.items)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if urlparse(self.path).path == "/graphql":
            self._send(200, {"data": {"items": _Api.items}})
        else:
            _Api.items.extend(body)
            self._send(201, {"ok": True})


@pytest.fixture
def api() -> Iterator[str]:
    _Api.items = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    table = request.getfixturevalue("pg").new("lin")
    url = f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test"  # trust auth ignores the password
    spec = {"connector": "postgres", "url": {"env": "UDOP_TEST_LIN_URL"}, "table": table}
    uri = f"postgres://127.0.0.1:5432/test.public.{table}"
    return Case({**spec, "mode": "overwrite"}, spec, uri, uri, env={"UDOP_TEST_LIN_URL": url})


def _mariadb(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    table = request.getfixturevalue("mysql").new("lin")
    spec = {"connector": "mariadb", "host": "127.0.0.1", "user": "root", "database": "test", "table": table}
    uri = f"mysql://127.0.0.1:3306/test.{table}"
    return Case({**spec, "mode": "overwrite"}, spec, uri, uri)


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    spec = {"connector": "sqlite", "database": str(tmp_path / "x.db"), "table": "t"}
    uri = f"sqlite://{tmp_path / 'x.db'}.t"
    return Case({**spec, "mode": "overwrite"}, spec, uri, uri)


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    out = tmp_path / "out"
    return Case({"connector": "local", "path": f"{out}/", "format": "parquet"},
                {"connector": "local", "path": f"{out}/"}, f"file://{out}", f"file://{out}")


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    request.getfixturevalue("moto_s3")
    spec = {"connector": "s3", "path": "s3://lin-lake/marts/out/"}
    return Case({**spec, "format": "parquet"}, spec, "s3://lin-lake/marts/out", "s3://lin-lake/marts/out")


def _http(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    base = request.getfixturevalue("api")
    spec = {"connector": "http", "url": f"{base}/items?api_key={SECRET}"}
    return Case({**spec, "mode": "append"}, spec, f"{base}/items", f"{base}/items")


def _graphql(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    base = request.getfixturevalue("api")
    return Case({"connector": "http", "url": f"{base}/items", "mode": "append"},
                {"connector": "graphql", "url": f"{base}/graphql", "query": "{ items { key value } }",
                 "records": "data.items", "headers": {"Authorization": f"Bearer {SECRET}"}},
                f"{base}/items", f"{base}/graphql")


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    prefix = request.getfixturevalue("redis_prefix")
    return Case({"connector": "redis", "kind": "keys", "key_prefix": prefix, "mode": "append"},
                {"connector": "redis", "kind": "keys", "pattern": f"{prefix}*"},
                f"redis://127.0.0.1:6379/0/{prefix}*", f"redis://127.0.0.1:6379/0/{prefix}*")


def _rabbitmq(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    name = request.getfixturevalue("rabbit_queue")
    spec = {"connector": "rabbitmq", "queue": name}
    return Case({**spec, "mode": "append"}, {**spec, "max_messages": 10}, f"rabbitmq://127.0.0.1:5672/{name}",
                f"rabbitmq://127.0.0.1:5672/{name}")


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import boto3
    from moto import mock_aws

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="lin-lake")
        yield


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    import redis

    prefix = f"udop-lin-{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = redis.Redis()
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def rabbit_queue() -> Iterator[str]:
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = conn.channel()
    name = f"udop-lin-{uuid.uuid4().hex[:10]}"
    channel.queue_declare(name, durable=True)
    yield name
    channel.queue_delete(name)
    conn.close()


@pytest.fixture
def mongo_host(tmp_path: Path) -> Iterator[str]:
    """SecantusDB in this process, requiring a login (user ``lin``, password ``SECRET``): host:port."""
    import pymongo
    from secantus import SecantusDBServer

    path = str(tmp_path / "mongo")
    server = SecantusDBServer(storage_path=path)
    server.start()
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(server.uri)
    client.admin.command("createUser", "lin", pwd=SECRET, roles=["root"])
    client.close()
    server.stop()
    server = SecantusDBServer(storage_path=path, require_auth=True)
    server.start()
    yield server.uri.removeprefix("mongodb://").rstrip("/")
    server.stop()


def _mongodb(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    host = request.getfixturevalue("mongo_host")
    url = f"mongodb://lin:{SECRET}@{host}/shop?authSource=admin"
    spec = {"connector": "mongodb", "url": url, "collection": "kv"}
    return Case({**spec, "mode": "append"}, spec, f"mongodb://{host}/shop.kv", f"mongodb://{host}/shop.kv")


CASES: dict[str, tuple[Callable[[pytest.FixtureRequest, Path], Case], list[Any]]] = {
    "postgres": (_postgres, [pytest.mark.postgres]),
    "mariadb": (_mariadb, [pytest.mark.mysql]),
    "sqlite": (_sqlite, []),
    "local": (_local, []),
    "s3": (_s3, [pytest.mark.aws]),
    "http": (_http, []),
    "graphql": (_graphql, []),
    "redis": (_redis, [pytest.mark.redis]),
    "rabbitmq": (_rabbitmq, [pytest.mark.rabbitmq]),
    "mongodb": (_mongodb, []),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=m) for n, (_, m) in CASES.items()])
def test_a_run_names_the_connector_target_and_source(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[name][0](request, tmp_path)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    src = tmp_path / "seed.csv"
    src.write_text("key,value\na,1\nb,2\nc,3\n")
    pipeline = load_pipeline(_pipeline(case, src), filename="lineage.json")
    store = open_store(f"sqlite:///{tmp_path / 'meta.db'}")
    state = SQLiteStateStore(tmp_path / "state.db")
    executor = LocalExecutor(store, workers=1, data_root=str(tmp_path / "data"),
                             services={"state": state, "base_dir": str(tmp_path)})
    try:
        run = executor.run(pipeline, run_id=f"r-{uuid.uuid4().hex[:6]}")
        assert run.state.value == "succeeded", run.error
        records = {r.task_id: r for r in store.get_lineage(run.id)}
    finally:
        state.close()
        store.close()
    # the load leaves a row naming what it wrote, fed by the run's own dataset
    assert records["to_x"].output_uri is not None
    assert dataset_uri(records["to_x"].output_uri) == case.target_uri
    assert records["to_x"].inputs == [records["seed"].output_uri]
    if case.source_uri is not None:
        assert [dataset_uri(u) for u in records["from_x"].inputs] == [case.source_uri]
        assert records["from_x"].rows == 3
    for record in records.values():
        assert SECRET not in repr(record)
