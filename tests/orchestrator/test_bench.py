"""`heist bench` at tiny sizes: it runs end to end and reports positive ratios (no timing assertions)."""
from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def test_run_bench_tiny_returns_rows_with_positive_ratios(ray_session):
    from orchestrator.bench import run_bench

    rows = run_bench("digits", workers=[1, 2], batch=[32, 8], images=256, repeats=1)
    raw = [r for r in rows if r["workers"] == 0]
    service = [r for r in rows if r["workers"] > 0]
    assert {8, 32} <= {r["batch"] for r in raw}
    assert [(r["batch"], r["workers"]) for r in service] == [(32, 1), (32, 2), (8, 1), (8, 2)]
    assert all(r["images_per_s"] > 0 and r["ratio"] > 0 for r in rows)
    assert all(r["images"] == 256 and r["mean_served_batch"] >= r["batch"] for r in service)
    assert all(0 < r["latency_p50_ms"] <= r["latency_p99_ms"] and r["forward_images_per_s"] > 0 for r in service)
    # where the CPU went: the compute thread ran on a core part of its busy time (thread clock, ns resolution);
    # the service and workers used no more than the whole machine had busy (process clocks count 10 ms ticks,
    # and these runs last tens of ms: one tick of misalignment per process is allowed)
    assert all(0 < r["compute_on_cpu"] <= 1.05 for r in service)
    assert all(min(r["cores_service"], r["cores_workers"], r["cores_machine"]) >= 0 for r in service)
    assert all(r["cores_service"] + r["cores_workers"] <= r["cores_machine"] + 1.0 for r in service)
    avail = ray_session.available_resources()
    assert avail.get("CPU", 0) > 0


def test_heist_bench_cli_prints_table(ray_session, capsys, tmp_path):
    from orchestrator import cli

    out_json = tmp_path / "bench.json"
    assert cli.main(["bench", "--dataset", "fashion_mnist", "--workers", "2", "--batch", "16", "--images", "64",
                     "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "raw forward" in out and "service, batch 16, 2 workers" in out and "ratio" in out and "p99 ms" in out
    assert [r["config"] for r in json.loads(out_json.read_text())][-1] == "service, batch 16, 2 workers"
    assert cli.main(["bench", "--dataset", "imagenet", "--images", "64"]) == 2


def test_defense_costs_time_every_defense_against_the_same_forward():
    from orchestrator.bench_defenses import defense_costs
    from workloads.defenses import REGISTRY

    rows = defense_costs("digits", batch=64, repeats=1)
    names = [r["defense"] for r in rows]
    assert names[0].startswith("none") and set(REGISTRY) - {"none"} <= set(names)
    assert "mad (per-sample loop)" in names
    base = rows[0]["seconds"]
    for r in rows[1:]:
        assert r["ratio"] == r["seconds"] / base and r["us_per_image"] == (r["seconds"] - base) / 64 * 1e6


def test_memory_bench_keeps_the_request_log_and_ledger_bounded():
    """The service engine's request log holds under one chunk of rows whatever the number of queries (the rest is
    in Parquet parts) and its ledger does not grow with the queries."""
    from orchestrator.bench_memory import run_memory_bench

    r = run_memory_bench(queries=16384, request=8, clients=4, in_flight=4, chunk=256)
    assert r["queries"] == 16384 and r["requests"] == 2048
    assert r["max_log_rows_in_memory"] < 256 and r["parquet_parts"] == 2048 // 256
    sizes = [p["ledger_bytes"] for p in r["points"]]
    assert max(sizes) - min(sizes) < 64 and max(sizes) < 2000     # larger counts, no more rows
