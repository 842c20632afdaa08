"""Spec models of the data task types (extract, transform, validate, load).

Their execution lives in ``layers/transforms`` and ``layers/connectors``; only their shape is here,
so that one JSON Schema covers a whole definition.
"""

from __future__ import annotations

from udop.spec.models import TaskBase

DATA_TASK_MODELS: tuple[type[TaskBase], ...] = ()
