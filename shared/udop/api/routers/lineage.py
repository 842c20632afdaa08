"""Lineage across runs: the datasets upstream or downstream of one dataset."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict

from udop.api.deps import Ctx, Viewer
from udop.api.schemas import Problem
from udop.lineage.graph import known, walk
from udop.lineage.naming import dataset_uri

router = APIRouter(tags=["lineage"])


class LineageHop(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    depth: int
    via_dataset: str
    pipeline: str
    run_id: str
    task_id: str


class LineageGraph(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str
    direction: Literal["upstream", "downstream"]
    datasets: list[LineageHop]


@router.get("/lineage", responses={404: {"model": Problem}})
def dataset_lineage(
    _: Viewer, ctx: Ctx,
    dataset: Annotated[str, Query(min_length=1, max_length=2048, description="dataset URI or path")],
    direction: Literal["upstream", "downstream"] = "upstream",
    depth: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> LineageGraph:
    """What ``dataset`` was derived from (upstream) or what was derived from it (downstream), across
    every run and pipeline in the metadata store; each dataset with the newest task run linking it."""
    edges = ctx.store.lineage_edges()
    if not known(edges, dataset):
        raise HTTPException(404, f"no recorded run read or wrote {dataset_uri(dataset)!r}")
    hops = walk(edges, dataset, direction, max_depth=depth)
    return LineageGraph(dataset=dataset_uri(dataset), direction=direction,
                        datasets=[LineageHop(**asdict(h)) for h in hops])
