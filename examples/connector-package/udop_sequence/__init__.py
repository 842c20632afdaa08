"""An example udop connector: ``sequence`` reads the integers ``start, start + step, ... < stop`` and
writes rows as JSON lines to ``path`` (append only).

    source: {connector: sequence, start: 0, stop: 1000, step: 1}
    target: {connector: sequence, path: out/rows.jsonl}
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
from pydantic import Field

from udop.connectors import Connector, ConnectorSettings


class SequenceSettings(ConnectorSettings):
    start: int = 0
    stop: int = Field(100, description="first value not produced")
    step: int = Field(1, ge=1)
    path: str | None = Field(None, description="write: a JSON lines file to append to")


class SequenceConnector(Connector):
    name = "sequence"
    Settings = SequenceSettings
    write_modes = ("append",)

    settings: SequenceSettings

    def read(self, *, since: Any = None) -> Iterator[pa.RecordBatch]:
        s = self.settings
        # incremental: start after the watermark (the framework would also filter for us)
        first = s.start if since is None else max(s.start, int(since) + 1)
        size = s.batch_size * s.step
        for lo in range(first, s.stop, size):
            values = range(lo, min(lo + size, s.stop), s.step)
            yield pa.RecordBatch.from_pydict(
                {"n": pa.array(values, pa.int64()), "square": pa.array([v * v for v in values], pa.int64())}
            )

    def check(self) -> None:
        if self.settings.stop < self.settings.start:
            self.fail("stop is below start", retryable=False)

    def write(self, batches: Iterable[pa.RecordBatch], mode: Any = None, keys: Any = None) -> int:
        self.resolve_mode(mode, keys)
        if not self.settings.path:
            self.fail("writing needs 'path'", retryable=False)
        # write to a side file first and append it whole: a failure leaves the target unchanged
        tmp = f"{self.settings.path}.udop-partial"
        total = 0
        with open(tmp, "w", encoding="utf-8") as fh:
            for batch in batches:
                for row in batch.to_pylist():
                    fh.write(json.dumps(row, default=str) + "\n")
                    total += 1
        with open(tmp, encoding="utf-8") as src, open(self.settings.path, "a", encoding="utf-8") as dst:
            dst.write(src.read())
        os.remove(tmp)
        return total
