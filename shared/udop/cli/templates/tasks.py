"""Task functions of the example pipeline: each gets the task context and its inputs.

An input is a Manifest (a dataset written by the upstream task: read it with .to_arrow() or
.to_pandas()) or the small JSON value the upstream task returned.
"""

import random

import pyarrow as pa
import pyarrow.compute as pc

REGIONS = {"n": "North", "s": "South", "e": "East", "w": "West"}


def make_orders(context, inputs, count, seed, day):
    rng = random.Random(seed)
    return pa.table(
        {
            "order_id": pa.array(range(1, count + 1), pa.int64()),
            "region": [rng.choice(list(REGIONS)) for _ in range(count)],
            "amount": pa.array([round(rng.uniform(5, 500), 2) for _ in range(count)], pa.float64()),
            "day": [day] * count,
        }
    )


def load_regions(context, inputs):
    return pa.table({"region": list(REGIONS), "name": list(REGIONS.values())})


def total_per_region(context, inputs):
    orders = inputs["orders"].to_arrow()
    regions = inputs["regions"].to_arrow()
    totals = orders.group_by("region").aggregate([("amount", "sum"), ("order_id", "count")])
    totals = totals.rename_columns(["region", "amount", "orders"])
    return totals.join(regions, "region").sort_by("region")


def top_region(context, inputs):
    totals = inputs["totals"].to_arrow()
    best = pc.index(totals["amount"], pc.max(totals["amount"])).as_py()
    row = totals.slice(best, 1).to_pylist()[0]
    context_note = f"run {context.run_id}"
    return {
        "region": row["name"],
        "amount": round(row["amount"], 2),
        "orders": row["orders"],
        "note": context_note,
    }
