"""udop transform steps and data-quality checks (DuckDB over Arrow).

The handlers of the task types ``extract``, ``transform``, ``validate`` and ``load`` (found by the core
through the entry point group ``udop.task_types``) and ``check_pipeline``, which checks every data task
of a pipeline before it runs (entry point group ``udop.validators``), and ``run_fused``, a transform and
the file load that alone reads it run as one query (entry point group ``udop.task_chains``).
"""

from __future__ import annotations

from udop_transforms._fusion import fusable, run_fused
from udop_transforms._tasks import run_extract, run_load, run_transform, run_validate
from udop_transforms._validate import check_pipeline

__all__ = ["check_pipeline", "fusable", "run_extract", "run_fused", "run_load", "run_transform",
           "run_validate"]
