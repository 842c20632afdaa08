"""Upstream and downstream of a dataset across runs and pipelines, from the store's lineage rows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from udop.lineage.naming import dataset_uri
from udop.store.api import LineageEdge

Direction = Literal["upstream", "downstream"]


@dataclass(frozen=True)
class Hop:
    """A dataset reached from the one asked about: how many tasks away, and the newest task run that
    linked it (its pipeline, run and task)."""

    dataset: str
    depth: int
    via_dataset: str  # the dataset one hop closer to the one asked about
    pipeline: str
    run_id: str
    task_id: str


def walk(edges: Iterable[LineageEdge], dataset: str, direction: Direction, *,
         max_depth: int = 50) -> list[Hop]:
    """Every dataset upstream (that ``dataset`` was derived from) or downstream (derived from it),
    breadth first; ``edges`` newest first, so each link names its latest run."""
    links: dict[str, dict[str, LineageEdge]] = {}
    for edge in edges:
        out = dataset_uri(edge.output_uri)
        for raw in edge.inputs:
            src = dataset_uri(raw)
            if src == out:
                continue
            a, b = (out, src) if direction == "upstream" else (src, out)
            links.setdefault(a, {}).setdefault(b, edge)  # the first seen is the newest
    start = dataset_uri(dataset)
    seen = {start}
    frontier = [start]
    found: list[Hop] = []
    for depth in range(1, max_depth + 1):
        nxt: list[str] = []
        for here in frontier:
            for there, edge in sorted(links.get(here, {}).items()):
                if there in seen:
                    continue
                seen.add(there)
                nxt.append(there)
                found.append(Hop(dataset=there, depth=depth, via_dataset=here, pipeline=edge.pipeline,
                                 run_id=edge.run_id, task_id=edge.task_id))
        if not nxt:
            break
        frontier = nxt
    return found


def known(edges: Iterable[LineageEdge], dataset: str) -> bool:
    """Whether any lineage row names ``dataset`` (as an input or an output)."""
    target = dataset_uri(dataset)
    return any(dataset_uri(e.output_uri) == target or any(dataset_uri(i) == target for i in e.inputs)
               for e in edges)
