"""GPU placement from the sweep YAML: fractional GPUs for the VictimService and the attacker workers go
into each trial's placement-group bundles on a cluster with GPUs, and the same YAML falls back to CPU with
exactly one warning on a cluster without. (The real no-GPU cluster run is in test_job_submit.py.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def gpu_sweep(kit, tmp_path):
    return kit.tiny_sweep(tmp_path / "gpu.yaml", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                          storage=tmp_path / "results", service={"num_cpus": 0.5, "num_gpus": 0.5},
                          workers={"num_cpus": 0.25, "num_gpus": 0.25})


def _gpus(bundles) -> list[float]:
    return [b.get("GPU", 0.0) for b in bundles]


def test_fractional_gpus_reach_the_trial_bundles(gpu_sweep):
    from orchestrator.sweep_config import bundles, load, plan

    cfg = load(gpu_sweep)
    assert cfg.service.num_gpus == 0.5 and cfg.workers.num_gpus == 0.25
    planned, warning = plan(cfg, {"CPU": 8.0, "GPU": 1.0})
    assert warning is None
    b = bundles(planned)
    assert {"CPU": 0.5, "GPU": 0.5} in b, f"no VictimService bundle with half a GPU in {b}"
    assert {"CPU": 0.25, "GPU": 0.25} in b, f"no attacker-worker bundle with a quarter GPU in {b}"
    assert sum(_gpus(b)) == pytest.approx(0.5 + 0.25 * max(a.workers for a in cfg.attacks))

    from ray import tune

    pgf = tune.PlacementGroupFactory(b, strategy="PACK")
    assert pgf.required_resources["GPU"] == pytest.approx(sum(_gpus(b)))


def test_no_gpus_means_cpu_with_one_warning(gpu_sweep):
    from orchestrator.sweep_config import bundles, load, plan

    planned, warning = plan(load(gpu_sweep), {"CPU": 2.0})
    assert warning and "no GPUs" in warning and "\n" not in warning
    assert "service.num_gpus=0.5" in warning and "workers.num_gpus=0.25" in warning
    assert sum(_gpus(bundles(planned))) == 0
    assert planned.service.num_gpus == 0 and planned.workers.num_gpus == 0


def test_validate_on_a_machine_without_gpus_warns_once(kit, gpu_sweep):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: no fallback to show")
    r = subprocess.run([sys.executable, "-m", "orchestrator", "validate", str(gpu_sweep)], cwd=REPO,
                       env=kit.clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and "no GPUs" in warnings[0], r.stderr


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_gpu_bundles_reserve_gpus_on_a_gpu_cluster(ray_session, gpu_sweep):
    """On the session's Ray (one logical GPU) one trial's placement group reserves the YAML's fractions."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from orchestrator.sweep_config import bundles, load, plan

    ray = ray_session
    planned, warning = plan(load(gpu_sweep), ray.cluster_resources())
    assert warning is None
    b = bundles(planned)
    before = ray.available_resources().get("GPU", 0.0)
    pg = placement_group(b, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=60)
        reserved = before - ray.available_resources().get("GPU", 0.0)
        assert reserved == pytest.approx(sum(_gpus(b)))
    finally:
        remove_placement_group(pg)
