"""Datasets by name, split three ways: the victim's train set, a disjoint attacker pool, the test set —
plus an optional held-out split (watermark sources) that none of the three contains.

Images are float32 tensors in [0, 1], shape (N, C, H, W); labels int64. `digits` is scikit-learn's
bundled 8x8 handwritten digits (no download); `fashion_mnist` reads the standard IDX files from a data
root or from `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`); the rest come from
torchvision under the data root and download only when online.
"""
from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from workloads.config import ConfigError, check_choice
from workloads.seeds import derive_seed

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path(os.environ.get("HEIST_DATA_ROOT", "~/.cache/heist/data")).expanduser()


@dataclasses.dataclass
class Dataset:
    """A dataset with the victim's train split, an attacker pool disjoint from it, a test split, and a held-out
    split disjoint from all three (empty unless asked for; the watermark recipes draw their sources from it)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_pool: torch.Tensor
    y_pool: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    x_holdout: torch.Tensor | None = None
    y_holdout: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])


def _digits(root: Path):
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes); nothing to download."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.int64), None, None, 10


def _read_idx(path: Path) -> np.ndarray:
    with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.exists():
            return cand
    return None


def _fashion_mnist(root: Path):
    """Fashion-MNIST (28×28 grey, 10 classes): IDX files under the data root or Debian's dataset-fashion-mnist."""
    folders = [root / "fashion_mnist", root / "FashionMNIST" / "raw", root, DEBIAN_FASHION_MNIST]
    for folder in folders:
        files = [_find_idx(folder, s) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
        if all(files):
            xs, ys, xt, yt = (_read_idx(f) for f in files)
            img = lambda a: torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 255.0
            lab = lambda a: torch.tensor(a, dtype=torch.int64)
            return img(xs), lab(ys), img(xt), lab(yt), 10
    raise ConfigError(f"dataset: fashion_mnist IDX files not found under {root} or {DEBIAN_FASHION_MNIST} "
                      f"(apt-get install dataset-fashion-mnist, or set data_root)")


def _torchvision(cls_name: str, num_classes: int, split_kw: str = "train"):
    def load(root: Path):
        import torchvision

        cls = getattr(torchvision.datasets, cls_name)
        out = []
        for train in (True, False):
            kw = {split_kw: train} if split_kw == "train" else {"split": "train" if train else "test"}
            try:
                ds = cls(str(root), download=True, **kw)
            except Exception as e:  # offline: torchvision raises URLError/RuntimeError
                raise ConfigError(f"dataset: {cls_name} is not under data root {root} and could not be "
                                  f"downloaded ({type(e).__name__}); put the files there or go online") from None
            data = ds.data if isinstance(ds.data, np.ndarray) else ds.data.numpy()
            labels = np.asarray(getattr(ds, "targets", None) if hasattr(ds, "targets") else ds.labels)
            x = torch.tensor(data, dtype=torch.float32) / 255.0
            x = x.unsqueeze(1) if x.ndim == 3 else (x if x.shape[1] in (1, 3) else x.permute(0, 3, 1, 2))
            out += [x.contiguous(), torch.tensor(labels, dtype=torch.int64)]
        return (*out, num_classes)

    load.__doc__ = f"torchvision's {cls_name} ({num_classes} classes), under the data root (downloaded when online)."

    return load


LOADERS = {
    "digits": _digits,
    "fashion_mnist": _fashion_mnist,
    "mnist": _torchvision("MNIST", 10),
    "kmnist": _torchvision("KMNIST", 10),
    "cifar10": _torchvision("CIFAR10", 10),
    "cifar100": _torchvision("CIFAR100", 100),
    "svhn": _torchvision("SVHN", 10, split_kw="split"),
}


def load_dataset(name: str, *, seed: int = 0, pool_fraction: float = 0.5, test_fraction: float = 0.2,
                 data_root: str | os.PathLike | None = None, holdout: int = 0, holdout_seed: int = 0) -> Dataset:
    """Load `name` and split it: the pool is `pool_fraction` of the training images, drawn by `seed`.

    Datasets without a standard test split (digits) first hold out `test_fraction` as the test set.
    `holdout` training images, drawn by `holdout_seed`, are then set aside before the pool/train split;
    with `holdout=0` every split is exactly what it was without the option.
    """
    check_choice("dataset", name, LOADERS)
    if not 0.0 <= pool_fraction < 1.0:
        raise ConfigError(f"pool_fraction: expected a value in [0, 1), got {pool_fraction!r}")
    if holdout < 0:
        raise ConfigError(f"holdout: expected >= 0 images, got {holdout!r}")
    root = Path(data_root).expanduser() if data_root else DEFAULT_ROOT
    x, y, x_test, y_test, k = LOADERS[name](root)
    gen = torch.Generator().manual_seed(seed)
    if x_test is None:
        perm = torch.randperm(len(x), generator=gen)
        n_test = int(round(test_fraction * len(x)))
        x_test, y_test = x[perm[:n_test]], y[perm[:n_test]]
        x, y = x[perm[n_test:]], y[perm[n_test:]]
    if holdout >= len(x):
        raise ConfigError(f"holdout: {holdout} images leave none of the {len(x)} training images of {name}")
    held = torch.randperm(len(x), generator=torch.Generator().manual_seed(holdout_seed))[:holdout]
    rest = torch.ones(len(x), dtype=torch.bool)
    rest[held] = False
    x_holdout, y_holdout, x, y = x[held], y[held], x[rest], y[rest]
    perm = torch.randperm(len(x), generator=gen)
    n_pool = int(round(pool_fraction * len(x)))
    pool, train = perm[:n_pool], perm[n_pool:]
    return Dataset(name, x[train], y[train], x[pool], y[pool], x_test, y_test, k, x_holdout, y_holdout)


def to_shape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Resize images (bilinear) and match channels (mean to grey, repeat to RGB) to `shape`."""
    c, h, w = shape
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True) if c == 1 else x.expand(-1, c, -1, -1) if x.shape[1] == 1 else x[:, :c]
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.clamp(0.0, 1.0).contiguous()


SURROGATE_KINDS = ("split", "dataset", "noise")


def surrogate_pool(kind: str, victim: Dataset, *, name: str | None = None, size: int | None = None,
                   seed: int = 0, data_root=None) -> torch.Tensor:
    """The attacker's unlabelled query pool, shaped like the victim's inputs.

    kind `split`: the victim dataset's pool split (disjoint from its train and test data);
    `dataset`: another dataset's train images resized to the victim's shape; `noise`: uniform noise.
    """
    return labelled_surrogate_pool(kind, victim, name=name, size=size, seed=seed, data_root=data_root)[0]


def labelled_surrogate_pool(kind: str, victim: Dataset, *, name: str | None = None, size: int | None = None,
                            seed: int = 0, data_root=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`surrogate_pool` with the pool's own class labels (None for noise): the labels of the attacker's
    data, which attacks that sample by class (adaptive Knockoff Nets) use; never the victim's answers."""
    check_choice("surrogate.kind", kind, SURROGATE_KINDS)
    if kind == "split":
        return victim.x_pool, victim.y_pool
    if kind == "noise":
        n = size or len(victim.x_pool)
        gen = torch.Generator().manual_seed(derive_seed("attack/sampling", seed))
        return torch.rand((n, *victim.shape), generator=gen), None
    if not name:
        raise ConfigError("surrogate.name: required when surrogate.kind is 'dataset'")
    if name == victim.name:
        raise ConfigError(f"surrogate.name: {name!r} is the victim's own dataset, whose train and test images would "
                          f"leak into the attacker's pool; use surrogate.kind: split for its disjoint pool")
    other = load_dataset(name, seed=seed, pool_fraction=0.0, data_root=data_root)
    return (to_shape(torch.cat([other.x_train, other.x_test]), victim.shape),
            torch.cat([other.y_train, other.y_test]))
