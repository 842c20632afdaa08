"""Compile a pipeline to Amazon States Language: one Standard state machine whose Task states invoke
the task runner Lambda, with nested Parallel states for the DAG and Map states for ``foreach``.

See docs/compiler.md for how a DAG becomes states, the failure semantics and the limits.
"""

from udop.compiler._asl import ENGINE_SUBSTITUTIONS, substitution_key
from udop.compiler._compile import (
    DEFINITION_LIMIT_BYTES,
    HISTORY_LIMIT_EVENTS,
    CompiledPipeline,
    CompileError,
    CompileOptions,
    Estimates,
    compile_pipeline,
)
from udop.compiler._schedule import (
    Node,
    Parallel,
    Series,
    Step,
    critical_path,
    iter_steps,
    makespan,
    schedule,
)

__all__ = [
    "DEFINITION_LIMIT_BYTES",
    "ENGINE_SUBSTITUTIONS",
    "HISTORY_LIMIT_EVENTS",
    "CompileError",
    "CompileOptions",
    "CompiledPipeline",
    "Estimates",
    "Node",
    "Parallel",
    "Series",
    "Step",
    "compile_pipeline",
    "critical_path",
    "iter_steps",
    "makespan",
    "schedule",
    "substitution_key",
]
