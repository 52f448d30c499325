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
from pathlib import Path

import torch
import torch.nn as nn

from workloads.config import positive
from workloads.data import Dataset, load_dataset
from workloads.metrics import accuracy
from workloads.models import build_model
from workloads.training import TrainConfig, fit, predict_proba

DEFAULT_CACHE = Path(os.environ.get("HEIST_CACHE", "~/.cache/heist/victims")).expanduser()


@dataclasses.dataclass(frozen=True)
class VictimConfig:
    """The victim: its dataset and splits, architecture, training recipe and seed."""

    dataset: str = "digits"
    arch: str = "lenet5"
    train: TrainConfig = TrainConfig(epochs=30, batch_size=64, lr=2e-3)
    seed: int = 0
    pool_fraction: float = 0.5
    test_fraction: float = 0.2
    data_root: str | None = None

    def __post_init__(self):
        from workloads.data import LOADERS
        from workloads.models import MODELS
        from workloads.config import check_choice

        check_choice("dataset", self.dataset, LOADERS)
        check_choice("arch", self.arch, MODELS)
        positive("seed", self.seed, 0)

    def load_data(self) -> Dataset:
        return load_dataset(self.dataset, seed=self.seed, pool_fraction=self.pool_fraction,
                            test_fraction=self.test_fraction, data_root=self.data_root)

    @property
    def key(self) -> str:
        """Content hash identifying this victim in the cache."""
        spec = {k: v for k, v in dataclasses.asdict(self).items() if k != "data_root"}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclasses.dataclass
class Victim:
    config: VictimConfig
    model: nn.Module
    data: Dataset
    accuracy: float
    from_cache: bool


def load_or_train(cfg: VictimConfig, cache_dir: str | os.PathLike | None = None) -> Victim:
    """Load the cached victim for `cfg`, or train it and cache it (written atomically)."""
    data = cfg.load_data()
    model = build_model(cfg.arch, data.shape, data.num_classes, seed=cfg.seed)
    path = Path(cache_dir or DEFAULT_CACHE) / cfg.key / "model.pt"
    from_cache = path.exists()
    if from_cache:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        fit(model, data.x_train, data.y_train, cfg.train, seed=cfg.seed)
        model.cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False, suffix=".tmp") as f:
            torch.save(model.state_dict(), f)
        os.replace(f.name, path)
        (path.parent / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    model.cpu().eval()
    acc = accuracy(predict_proba(model, data.x_test), data.y_test)
    return Victim(cfg, model, data, acc, from_cache)
