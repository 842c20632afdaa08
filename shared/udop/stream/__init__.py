"""Stream processing: a pipeline with ``spec.trigger.stream`` consumes its source continuously, each
micro-batch a run of the pipeline's tasks on the same engine, with source positions owned by udop and
advanced only after the batch's loads committed (docs/streams.md)."""

from __future__ import annotations

from udop.stream.source import StreamBatch, StreamSource

__all__ = ["StreamBatch", "StreamSource"]
