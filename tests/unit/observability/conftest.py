"""A real webhook receiver (http.server in a thread) and a pipeline writer that takes spec extras."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml


class Receiver:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.raw.append(body)
                outer.payloads.append(json.loads(body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/{uuid.uuid4().hex}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


TASKS = '''
import time
import pyarrow as pa
from udop.errors import FatalError


def boom(context, inputs, **args):
    raise FatalError(f"could not load customer: {args}")


def rows(context, inputs, n=10, sleep=0.0):
    time.sleep(sleep)
    return pa.table({"n": pa.array(range(n), pa.int64())})
'''


class Obs:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.module = f"udop_obs_{uuid.uuid4().hex[:10]}"
        (root / f"{self.module}.py").write_text(TASKS)

    def pipeline(self, tasks: list[dict[str, Any]], name: str = "alerting", **spec: Any) -> Path:
        for task in tasks:
            if task.get("type", "python") == "python" and ":" not in task.get("callable", ":"):
                task["callable"] = f"{self.module}:{task['callable']}"
        doc = {"apiVersion": "udop/v1", "kind": "Pipeline", "metadata": {"name": name},
               "spec": {"tasks": tasks, **spec}}
        path = self.root / "pipeline.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path


@pytest.fixture
def obs(tmp_path: Path) -> Iterator[Obs]:
    import sys

    o = Obs(tmp_path)
    sys.path.insert(0, str(tmp_path))
    yield o
    sys.path.remove(str(tmp_path))
    sys.modules.pop(o.module, None)
