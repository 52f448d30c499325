"""`heist bench --serve` runs end to end on a tiny setting: raw, actor and HTTP rows with their ratios."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.ray


def test_serve_bench_tiny_has_raw_actor_and_http_rows(ray_session):
    from orchestrator.bench_serve import format_rows, run_serve_bench

    rows = run_serve_bench("digits", workers=(2,), batch=64, images=512, repeats=1)
    paths = [(r["path"], r["workers"]) for r in rows]
    assert ("raw", 0) in paths and {("actor", 2), ("http", 2)} <= set(paths)
    for r in rows:
        assert r["images_per_s"] > 0 and r["ratio"] > 0
        if r["workers"]:
            assert r["vs_actor"] > 0
    assert "http, 2 clients" in format_rows(rows)
