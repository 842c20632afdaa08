"""The task graph of a pipeline: checks (duplicates, unknown dependencies, cycles), order, drawing."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from udop.errors import SpecError

if TYPE_CHECKING:
    from udop.spec.loader import LoadedDefinition
    from udop.spec.models import Pipeline

__all__ = ["check_dag", "dependants", "find_cycle", "to_dot", "to_mermaid", "topological_order"]


def _error(loaded: LoadedDefinition | None, path: tuple[str | int, ...], message: str) -> SpecError:
    if loaded is not None:
        return loaded.error(path, message)
    from udop.spec.location import format_path

    return SpecError(message, path=format_path(path))


def check_dag(pipeline: Pipeline, loaded: LoadedDefinition | None = None) -> list[SpecError]:
    """Every problem of the graph, each located at the offending element."""
    errors: list[SpecError] = []
    first_index: dict[str, int] = {}
    for i, task in enumerate(pipeline.spec.tasks):
        if task.id in first_index:
            errors.append(
                _error(
                    loaded,
                    ("spec", "tasks", i, "id"),
                    f"duplicate task id {task.id!r} (first used by spec.tasks[{first_index[task.id]}])",
                )
            )
        else:
            first_index[task.id] = i
    for i, task in enumerate(pipeline.spec.tasks):
        for j, dep in enumerate(task.depends_on):
            if dep == task.id:
                errors.append(
                    _error(
                        loaded, ("spec", "tasks", i, "depends_on", j), f"task {task.id!r} depends on itself"
                    )
                )
            elif dep not in first_index:
                import difflib

                close = difflib.get_close_matches(dep, list(first_index), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                errors.append(
                    _error(loaded, ("spec", "tasks", i, "depends_on", j), f"unknown task {dep!r}{hint}")
                )
        if task.depends_on and len(set(task.depends_on)) != len(task.depends_on):
            errors.append(_error(loaded, ("spec", "tasks", i, "depends_on"), "a dependency is listed twice"))
        if task.foreach is not None and task.foreach.input not in task.depends_on:
            errors.append(
                _error(
                    loaded,
                    ("spec", "tasks", i, "foreach", "input"),
                    f"foreach input {task.foreach.input!r} must be one of depends_on",
                )
            )
    if errors:
        return errors
    cycle = find_cycle(pipeline)
    if cycle:
        i = first_index[cycle[0]]
        errors.append(
            _error(loaded, ("spec", "tasks", i, "depends_on"), "dependency cycle: " + " -> ".join(cycle))
        )
    return errors


def _graph(pipeline: Pipeline) -> dict[str, list[str]]:
    return {t.id: list(t.depends_on) for t in pipeline.spec.tasks}


def find_cycle(pipeline: Pipeline) -> list[str] | None:
    """A cycle as ``[a, b, ..., a]`` following "depends on" edges, or None. Iterative DFS."""
    graph = _graph(pipeline)
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    for root in graph:
        if color[root] != white:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        while stack:
            node, idx = stack.pop()
            if idx == 0:
                color[node] = grey
                path.append(node)
            deps = [d for d in graph[node] if d in graph]
            if idx < len(deps):
                stack.append((node, idx + 1))
                nxt = deps[idx]
                if color[nxt] == grey:
                    # the task that depends on `nxt` ... back to nxt; print in "depends on" order
                    cycle = path[path.index(nxt) :]
                    return [*cycle, nxt]
                if color[nxt] == white:
                    stack.append((nxt, 0))
            else:
                color[node] = black
                path.pop()
    return None


def topological_order(pipeline: Pipeline) -> list[str]:
    """Task ids with every dependency before its dependants; ties keep definition order."""
    graph = _graph(pipeline)
    indegree = {t: len(d) for t, d in graph.items()}
    out = dependants(pipeline)
    queue = deque(t for t in graph if indegree[t] == 0)
    order = []
    while queue:
        node = queue.popleft()
        order.append(node)
        for nxt in out[node]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                queue.append(nxt)
    if len(order) != len(graph):
        raise ValueError("the graph has a cycle; check_dag reports it")
    return order


def dependants(pipeline: Pipeline) -> dict[str, list[str]]:
    """Reverse edges: task id -> the tasks that depend on it, in definition order."""
    out: dict[str, list[str]] = {t.id: [] for t in pipeline.spec.tasks}
    for task in pipeline.spec.tasks:
        for dep in task.depends_on:
            out[dep].append(task.id)
    return out


def downstream(pipeline: Pipeline, task_id: str, graph: dict[str, list[str]] | None = None) -> list[str]:
    """Every task that depends on ``task_id``, directly or not."""
    out = graph or dependants(pipeline)
    seen: dict[str, None] = {}
    queue = deque(out[task_id])
    while queue:
        node = queue.popleft()
        if node not in seen:
            seen[node] = None
            queue.extend(out[node])
    return list(seen)


def _label(task: Any) -> str:
    return f"{task.id}<br/><small>{task.type}</small>"


def to_mermaid(pipeline: Pipeline) -> str:
    lines = ["flowchart LR"]
    for task in pipeline.spec.tasks:
        lines.append(f'    {_node_id(task.id)}["{_label(task)}"]')
    for task in pipeline.spec.tasks:
        for dep in task.depends_on:
            lines.append(f"    {_node_id(dep)} --> {_node_id(task.id)}")
    return "\n".join(lines) + "\n"


def to_dot(pipeline: Pipeline) -> str:
    lines = [f'digraph "{pipeline.metadata.name}" {{', "    rankdir=LR;", "    node [shape=box];"]
    for task in pipeline.spec.tasks:
        lines.append(f'    "{task.id}" [label="{task.id}\\n({task.type})"];')
    for task in pipeline.spec.tasks:
        for dep in task.depends_on:
            lines.append(f'    "{dep}" -> "{task.id}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _node_id(task_id: str) -> str:
    # mermaid node ids: no '-'; keep them unique by escaping
    return "t_" + task_id.replace("-", "__")
