"""Real `udop worker` processes over the shared Redis and PostgreSQL, for the Celery executor's tests
and benchmark: one key prefix and one PostgreSQL schema of their own, removed at ``close``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

UDOP = str(Path(sys.executable).parent / "udop")
POSTGRES = os.environ.get("UDOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("UDOP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


class Cluster:
    """A metadata schema, a key prefix and the workers started on them (``start_worker``)."""

    def __init__(self, root: Path, *, visibility_timeout: float = 3600.0, remove_root: bool = False) -> None:
        self.root = root
        self.remove_root = remove_root  # a folder of its own (not pytest's): removed at close
        self.prefix = f"udop-test-{uuid.uuid4().hex[:10]}"
        self.schema = f"celery_{uuid.uuid4().hex[:12]}"
        self._plain = POSTGRES.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(self._plain, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')  # type: ignore[arg-type]
        self.database_url = f"{POSTGRES}?options=-csearch_path%3D{self.schema}"
        self.data_root = str(root / "data")
        self.env = {
            **os.environ,
            "UDOP_DATABASE_URL": self.database_url,
            "UDOP_DATA_ROOT": self.data_root,
            "UDOP_HOME": str(root / "home"),
            "UDOP_CELERY_BROKER_URL": REDIS,
            "UDOP_CELERY_PREFIX": self.prefix,
            "UDOP_CELERY_VISIBILITY_TIMEOUT": str(visibility_timeout),
            "UDOP_CELERY_RESTORE_INTERVAL": "1",
        }
        self.workers: list[subprocess.Popen[bytes]] = []
        from udop.store import open_store

        open_store(self.database_url).close()  # migrated once, before workers open it together
        self._app: Any = None

    def settings(self) -> Any:
        from udop.settings import CelerySettings

        return CelerySettings(celery_broker_url=REDIS, celery_prefix=self.prefix,
                              celery_visibility_timeout=float(self.env["UDOP_CELERY_VISIBILITY_TIMEOUT"]),
                              celery_restore_interval=1.0)

    @property
    def app(self) -> Any:
        if self._app is None:
            from udop.executor.celery import make_app

            self._app = make_app(self.settings())
        return self._app

    def start_worker(self, name: str, *args: str, concurrency: int = 2, trusted: bool = True,
                     env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """``udop worker [--trusted]`` in a session of its own (SIGKILL of its group kills the whole
        worker, as a lost machine or container would); waits until it answers a ping."""
        log = open(self.root / f"worker-{name}.log", "ab")  # noqa: SIM115  (kept open for the process)
        process = subprocess.Popen(
            [UDOP, "worker", *(["--trusted"] if trusted else []), "-c", str(concurrency), "-n", f"{name}@%h",
             "-l", "INFO", *args],
            env={**self.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=self.root,
        )
        log.close()
        self.workers.append(process)
        self.wait_for(name, process)
        return process

    def wait_for(self, name: str, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"worker {name} exited ({process.returncode}): {self.log(name)[-2000:]}")
            replies = self.app.control.ping(timeout=0.5)
            if any(next(iter(r)).startswith(f"{name}@") for r in replies):
                return
        raise RuntimeError(f"worker {name} did not answer within {timeout:g}s: {self.log(name)[-2000:]}")

    def log(self, name: str) -> str:
        path = self.root / f"worker-{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and its pool processes at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                self.kill(process)
        if self._app is not None:
            self._app.close()
        import redis

        client = redis.Redis.from_url(REDIS)
        keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
        client.close()
        with psycopg.connect(self._plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{self.schema}" CASCADE')  # type: ignore[arg-type]
        if self.remove_root:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)
