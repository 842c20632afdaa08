"""``udop lineage DATASET``: where a dataset came from and what was made from it, across runs."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from udop.errors import InputError


@click.command()
@click.argument("dataset")
@click.option("--upstream", "direction", flag_value="upstream", default=True,
              help="What DATASET was derived from (the default).")
@click.option("--downstream", "direction", flag_value="downstream", help="What was derived from DATASET.")
@click.option("--depth", type=click.IntRange(1, 1000), default=50, show_default=True, help="Hops to follow.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def lineage(dataset: str, direction: str, depth: int, as_json: bool) -> None:
    """Show the datasets upstream or downstream of DATASET in every recorded run.

    DATASET is a dataset URI as `udop runs show` prints it (postgres://host:5432/db.schema.table,
    mysql://host:3306/db.table, s3://bucket/prefix, file:///path) or a local path.
    """
    from udop.lineage.graph import known, walk
    from udop.lineage.naming import dataset_uri
    from udop.store import open_store

    edges = open_store().lineage_edges()
    if not known(edges, dataset):
        raise InputError(f"no recorded run read or wrote {dataset_uri(dataset)!r}; "
                         "see `udop runs show RUN_ID` for the dataset names runs recorded")
    hops = walk(edges, dataset, "upstream" if direction == "upstream" else "downstream", max_depth=depth)
    if as_json:
        click.echo(json.dumps({"dataset": dataset_uri(dataset), "direction": direction,
                               "datasets": [asdict(h) for h in hops]}, indent=2))
        return
    click.echo(f"{direction} of {dataset_uri(dataset)}")
    if not hops:
        click.echo("  (nothing recorded)")
    for hop in hops:
        click.echo(f"  {'  ' * (hop.depth - 1)}{hop.dataset}  "
                   f"[{hop.pipeline} run {hop.run_id}, task {hop.task_id}]")
