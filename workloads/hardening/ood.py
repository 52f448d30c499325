"""Out-of-distribution images for training-time defenses (InI's induction set, Outlier Exposure's outliers).

`OodSource` is a recipe setting: `{kind: dataset, name: digits}` (another dataset the data layer knows, its
train and test images resized to the victim's shape) or `{kind: noise}` (uniform noise in [0, 1]).
Resizing is bilinear (workloads.data.to_shape); channels convert only grey ↔ RGB.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from workloads.config import ConfigError, check_choice, positive
from workloads.data import LOADERS, Dataset, load_dataset, to_shape


@dataclasses.dataclass(frozen=True)
class OodSource:
    kind: Literal["dataset", "noise"] = "dataset"
    name: str | None = None          # kind dataset: a dataset the data layer knows (required)
    size: int | None = None          # kind noise: how many images (default: as many as the victim's train set)
    resize: bool = True              # false: the source must already have the victim's height and width

    def __post_init__(self):
        if self.kind == "dataset":
            if not self.name:
                raise ConfigError("name: required when kind is 'dataset'")
            check_choice("name", self.name, LOADERS)
        elif self.name is not None:
            raise ConfigError(f"name: only with kind 'dataset', got {self.name!r} with kind 'noise'")
        if self.size is not None:
            if self.kind != "noise":
                raise ConfigError(f"size: only with kind 'noise', got {self.size!r}")
            positive("size", self.size)


def ood_images(src: OodSource, victim: Dataset, *, seed: int, data_root=None, field: str = "ood") -> torch.Tensor:
    """The OOD images shaped like the victim's inputs; ConfigError naming `field` when they cannot be."""
    if src.kind == "noise":
        gen = torch.Generator().manual_seed(seed)
        return torch.rand((src.size or len(victim.x_train), *victim.shape), generator=gen)
    if src.name == victim.name:
        raise ConfigError(f"{field}.name: {src.name!r} is the victim's own dataset, not out-of-distribution data")
    other = load_dataset(src.name, seed=seed, pool_fraction=0.0, data_root=data_root)
    x = torch.cat([other.x_train, other.x_test])
    (c, h, w), (oc, oh, ow) = victim.shape, tuple(x.shape[1:])
    if oc != c and {oc, c} != {1, 3}:
        raise ConfigError(f"{field}.name: {src.name!r} images have {oc} channels and the victim's have {c}; "
                          f"only grey and RGB convert into each other")
    if (oh, ow) != (h, w) and not src.resize:
        raise ConfigError(f"{field}.resize: {src.name!r} images are {oh}x{ow}, the victim's {h}x{w}; "
                          f"set resize: true or pick a {h}x{w} source")
    return to_shape(x, victim.shape)


class OodBatches:
    """OOD batches drawn by cycling through the images, each pass in a fresh random order (a shuffled loader)."""

    def __init__(self, images: torch.Tensor, generator: torch.Generator):
        self.images, self.generator = images, generator
        self.order = torch.empty(0, dtype=torch.long)

    def take(self, n: int) -> torch.Tensor:
        while len(self.order) < n:
            self.order = torch.cat([self.order, torch.randperm(len(self.images), generator=self.generator)])
        idx, self.order = self.order[:n], self.order[n:]
        return self.images[idx]
