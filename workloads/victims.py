"""Victim models: trained once per (dataset, architecture, training settings, seed) and cached by content hash.

The cache key is the SHA-256 of the victim config's canonical JSON (the data root excluded), so the
same victim is reused across trials and sweeps; on a cluster point `cache_dir` at shared storage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from workloads.config import positive
from workloads.data import Dataset, load_dataset
from workloads.hardening import HardeningConfig, HardeningContext, harden
from workloads.metrics import accuracy
from workloads.models import build_model
from workloads.seeds import derive_seed
from workloads.training import TrainConfig, default_device, predict_proba

# Bumped whenever the same config would train different weights (v2: per-role seed streams).
RECIPE_VERSION = 2
DEFAULT_CACHE = Path(os.environ.get("HEIST_CACHE", "~/.cache/heist/victims")).expanduser()


@dataclasses.dataclass(frozen=True)
class VictimConfig:
    """The victim: its dataset and splits, architecture, training recipe and seed."""

    dataset: str = "digits"
    arch: str = "lenet5"
    train: TrainConfig = TrainConfig(epochs=30, batch_size=64, lr=2e-3)
    seed: int = 0
    hardening: HardeningConfig = HardeningConfig()
    pool_fraction: float = 0.5
    test_fraction: float = 0.2
    holdout: int = 0                     # training images set aside, in no split (watermark sources)
    data_root: str | None = None

    def __post_init__(self):
        from workloads.data import LOADERS
        from workloads.models import MODELS
        from workloads.config import check_choice

        check_choice("dataset", self.dataset, LOADERS)
        check_choice("arch", self.arch, MODELS)
        positive("seed", self.seed, 0)
        positive("holdout", self.holdout, 0)
        if isinstance(self.hardening, HardeningConfig):     # a sweep's search space checks each point it builds
            self.hardening.check_holdout(self.holdout)

    def load_data(self) -> Dataset:
        return load_dataset(self.dataset, seed=derive_seed("data/split", self.seed), pool_fraction=self.pool_fraction,
                            test_fraction=self.test_fraction, data_root=self.data_root, holdout=self.holdout,
                            holdout_seed=derive_seed("data/holdout", self.seed))

    @property
    def key(self) -> str:
        """Content hash identifying this victim in the cache (`holdout: 0` hashes as before the field existed)."""
        spec = {k: v for k, v in dataclasses.asdict(self).items()
                if k != "data_root" and not (k == "holdout" and v == 0)}
        spec["hardening"] = self.hardening.resolved()
        spec["recipe_version"] = RECIPE_VERSION
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass
class Victim:
    config: VictimConfig
    model: nn.Module
    data: Dataset
    accuracy: float
    from_cache: bool
    training: dict = dataclasses.field(default_factory=dict)       # train_seconds and the recipe's final metrics
    artifacts: dict = dataclasses.field(default_factory=dict)      # tensors the recipe keeps (e.g. watermark set)


def load_or_train(cfg: VictimConfig, cache_dir: str | os.PathLike | None = None) -> Victim:
    """Load the cached victim for `cfg`, or train it with its hardening recipe and cache it (written atomically)."""
    data = cfg.load_data()
    model = initial_model(cfg, data)
    folder = Path(cache_dir or DEFAULT_CACHE) / cfg.key
    path = folder / "model.pt"
    from_cache = path.exists()
    if from_cache:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        training = json.loads((folder / "training.json").read_text()) if (folder / "training.json").exists() else {}
        artifacts = (torch.load(folder / "artifacts.pt", map_location="cpu", weights_only=True)
                     if (folder / "artifacts.pt").exists() else {})
    else:
        ctx = HardeningContext(model, data, cfg.train, cfg.arch, cfg.seed, cfg.data_root, default_device())
        t0 = time.perf_counter()
        result = harden(cfg.hardening, ctx)
        model = result.model.cpu()
        training = {"train_seconds": time.perf_counter() - t0, **{k: float(v) for k, v in result.metrics.items()}}
        artifacts = {k: v.detach().cpu() for k, v in result.artifacts.items()}
        folder.mkdir(parents=True, exist_ok=True)
        if artifacts:
            _atomic_save(artifacts, folder / "artifacts.pt")
        (folder / "training.json").write_text(json.dumps(training, indent=2))
        (folder / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
        _atomic_save(model.state_dict(), path)       # last: its presence marks a complete entry
    model.cpu().eval()
    acc = accuracy(predict_proba(model, data.x_test), data.y_test)
    return Victim(cfg, model, data, acc, from_cache, training, artifacts)


def initial_model(cfg: VictimConfig, data: Dataset) -> nn.Module:
    """The victim's freshly initialised model, from its own "victim/init" seed stream."""
    return build_model(cfg.arch, data.shape, data.num_classes, seed=derive_seed("victim/init", cfg.seed))


def _atomic_save(obj, path: Path) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
        torch.save(obj, f)
    os.replace(f.name, path)
