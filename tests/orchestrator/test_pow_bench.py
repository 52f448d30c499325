"""`heist bench --pow` measures the minter against raw SHA-1 and leakage accounting against the forward."""
from orchestrator.bench import format_pow, run_pow_bench


def test_pow_bench_reports_rates_and_accounting_cost_per_batch():
    r = run_pow_bench("digits", batch=32, seconds=0.05, repeats=1, k=30)
    assert r["mint_rate"] > 1e4 and r["raw_sha1_rate"] > 1e4 and 0 < r["mint_over_raw"] < 5
    assert all(r[f"{name}_ms"] > 0 for name in ("pknn", "entropy", "gap")) and r["train_points"] == 719
    table = format_pow(r)
    assert "minter/raw" in table and "accounting: pknn" in table
