"""GeneratorA, the image generator of the data-free attacks (DFAD, Fang et al. 2019; used as-is by DFME,
Truong et al., CVPR 2021, `network/gan.py`), shaped for the victim's input size.

z (nz) -> Linear -> (2 ngf, H/4, W/4) -> BN -> up x2 -> conv-BN-LeakyReLU(0.2) -> up x2 -> conv-BN-LeakyReLU
-> conv -> BN(affine=False). `forward` returns this pre-activation output (DFME's `pre_x=True`, where the
zeroth-order directions are applied); `images(pre)` maps it to the victim's [0, 1] inputs as (tanh + 1) / 2
(the reference's victims take tanh's [-1, 1] directly; Heist's take [0, 1]). Sizes that are not multiples
of 4 (e.g. 30x30) are generated at the next multiple and resized.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GeneratorA(nn.Module):
    def __init__(self, shape: tuple[int, int, int], nz: int = 256, ngf: int = 64):
        super().__init__()
        c, h, w = shape
        self.shape = (c, h, w)
        self.init = (math.ceil(h / 4), math.ceil(w / 4))
        self.fc = nn.Linear(nz, 2 * ngf * self.init[0] * self.init[1])
        self.bn0 = nn.BatchNorm2d(2 * ngf)
        self.block1 = nn.Sequential(nn.Conv2d(2 * ngf, 2 * ngf, 3, 1, 1), nn.BatchNorm2d(2 * ngf),
                                    nn.LeakyReLU(0.2, inplace=True))
        self.block2 = nn.Sequential(nn.Conv2d(2 * ngf, ngf, 3, 1, 1), nn.BatchNorm2d(ngf),
                                    nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(ngf, c, 3, 1, 1),
                                    nn.BatchNorm2d(c, affine=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.bn0(self.fc(z).view(len(z), -1, *self.init))
        out = self.block1(F.interpolate(out, scale_factor=2))
        out = self.block2(F.interpolate(out, scale_factor=2))
        if tuple(out.shape[2:]) != self.shape[1:]:
            out = F.interpolate(out, size=self.shape[1:], mode="bilinear", align_corners=False)
        return out

    @staticmethod
    def images(pre: torch.Tensor) -> torch.Tensor:
        """The victim's inputs in [0, 1] from the pre-activation output."""
        return (torch.tanh(pre) + 1) / 2


def build_generator(shape: tuple[int, int, int], nz: int, ngf: int, seed: int) -> GeneratorA:
    """A GeneratorA with initial weights fixed by `seed`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GeneratorA(tuple(shape), nz, ngf)
