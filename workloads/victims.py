"""Victim models: trained once per (dataset, architecture, training settings, seed) and cached by content hash.

The cache key is the SHA-256 of the victim config's canonical JSON (the data root excluded), so the
same victim is reused across trials and sweeps; on a cluster point `cache_dir` at shared storage.

Bring your own trained victim: `checkpoint: path/to/state_dict.pt` (a PyTorch state dict of `arch` for the
dataset's input shape and classes, read with `weights_only=True`) is loaded instead of training; the key then
hashes the file's bytes (SHA-256), not its path, so the same weights have the same key wherever they lie.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from workloads.config import ConfigError, positive
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
    checkpoint: str | None = None        # a trained state dict of `arch` to serve instead of training one

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
        if self.checkpoint is not None:
            if not Path(self.checkpoint).expanduser().is_file():
                raise ConfigError(f"checkpoint: no such file: {self.checkpoint!r}")
            # absolute, so a Tune trial (which changes directory) finds it; the key hashes the bytes, not the path
            object.__setattr__(self, "checkpoint", str(Path(self.checkpoint).expanduser().resolve()))
            if isinstance(self.hardening, HardeningConfig) and self.hardening.name != "none":
                raise ConfigError(f"hardening.name: a checkpoint victim is not trained here, so it takes no "
                                  f"hardening recipe; got {self.hardening.name!r}")

    def load_data(self) -> Dataset:
        return load_dataset(self.dataset, seed=derive_seed("data/split", self.seed), pool_fraction=self.pool_fraction,
                            test_fraction=self.test_fraction, data_root=self.data_root, holdout=self.holdout,
                            holdout_seed=derive_seed("data/holdout", self.seed))

    @property
    def key(self) -> str:
        """Content hash identifying this victim in the cache (`holdout: 0` and no checkpoint hash as before those
        fields existed; a checkpoint counts by the SHA-256 of its bytes)."""
        spec = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("data_root", "checkpoint") and not (k == "holdout" and v == 0)}
        spec["hardening"] = self.hardening.resolved()
        if self.checkpoint is not None:
            spec["checkpoint_sha256"] = checkpoint_sha256(self.checkpoint)
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


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file's bytes (hex), memoised per (path, size, mtime)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return _sha256_of(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(cfg: VictimConfig, data: Dataset) -> nn.Module:
    """`cfg.arch` with the weights of `cfg.checkpoint`; a ConfigError in one line when they do not fit."""
    model = build_model(cfg.arch, data.shape, data.num_classes)
    where = f"victim.checkpoint: {cfg.checkpoint}"
    try:
        state = torch.load(Path(cfg.checkpoint).expanduser(), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(f"{where}: not a loadable PyTorch state dict ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where}: expected a state dict (parameter name -> tensor), got {type(state).__name__}")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = ([f"{len(missing)} missing (first {missing[0]!r})"] if missing else []) + \
                   ([f"{len(unexpected)} unexpected (first {unexpected[0]!r})"] if unexpected else []) + \
                   ([f"{len(wrong)} of another shape (first {wrong[0]})"] if wrong else [])
        raise ConfigError(f"{where}: does not fit arch {cfg.arch!r} for {cfg.dataset} {tuple(data.shape)} with "
                          f"{data.num_classes} classes: parameters {'; '.join(problems)}")
    model.load_state_dict(state)
    return model


def load_or_train(cfg: VictimConfig, cache_dir: str | os.PathLike | None = None) -> Victim:
    """Load the cached victim for `cfg`, or train it with its hardening recipe and cache it (written atomically).
    A `checkpoint` victim is loaded from its file (nothing is trained or cached)."""
    data = cfg.load_data()
    if cfg.checkpoint is not None:
        model = load_checkpoint(cfg, data).eval()
        return Victim(cfg, model, data, accuracy(predict_proba(model, data.x_test), data.y_test), True)
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
