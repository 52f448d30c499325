"""Gaussian output noise, as ART's `GaussianNoise` postprocessor (Nicolae et al., "Adversarial
Robustness Toolbox v1.0.0", arXiv 1807.01069, 2018), with the answer kept on the simplex exactly:

    ỹ = Π_Δ(y + ε),   ε ~ N(0, σ² I),

where Π_Δ is the Euclidean projection onto the probability simplex, computed by the sort-based
algorithm of Duchi, Shalev-Shwartz, Singer, Chandra, "Efficient Projections onto the ℓ1-Ball for
Learning in High Dimensions" (ICML 2008), batched over rows. (ART clips negatives and rescales instead,
which is not the nearest point on the simplex.)

The noise of a row is a deterministic function of that row's input bytes and the defense seed:
blake2b(row bytes, key=seed) gives a 64-bit key, SplitMix64 (a counter-based generator) turns the
key and counters 1..2K into uniforms, and Box–Muller turns those into K standard normals, all
vectorised over the batch. So a row's answer never depends on the other rows in its batch, and
re-sending the same input returns the same answer: repeated queries cannot average the noise out.
"""
import dataclasses
import hashlib

import numpy as np
import torch

from workloads.config import knob, positive
from workloads.defenses import register
from workloads.seeds import derive_seed

SPLITMIX_INCREMENT = np.uint64(0x9E3779B97F4A7C15)


@dataclasses.dataclass(frozen=True)
class GaussianParams:
    sigma: float = knob(0.2, "standard deviation of the Gaussian noise added to each probability before the answer is "
                             "projected back onto the simplex", ">= 0")

    def __post_init__(self):
        positive("sigma", self.sigma, 0)


def project_onto_simplex(v: torch.Tensor) -> torch.Tensor:
    """The nearest point (Euclidean) on the probability simplex to each row of v (Duchi et al. 2008)."""
    sorted_desc = torch.sort(v, dim=1, descending=True).values
    excess = sorted_desc.cumsum(1) - 1
    ranks = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    support = ((sorted_desc - excess / ranks) > 0) * ranks
    rho = support.amax(1, keepdim=True).clamp_min(1)   # a NaN row has no support: it stays NaN, and row-local
    threshold = excess.gather(1, rho.long() - 1) / rho
    return (v - threshold).clamp_min(0)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def input_keyed_normals(x: torch.Tensor, seed: int, num: int) -> torch.Tensor:
    """(len(x), num) standard normals, each row a function of that row's bytes and `seed` only."""
    rows = x.detach().cpu().contiguous().reshape(len(x), -1).numpy()
    salt = seed.to_bytes(8, "little", signed=True)
    keys = np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), digest_size=8, key=salt).digest(), "little")
                     for row in rows], dtype=np.uint64)
    counters = np.arange(1, 2 * num + 1, dtype=np.uint64)
    bits = _splitmix64(keys[:, None] + counters[None, :] * SPLITMIX_INCREMENT)
    uniforms = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    radius = np.sqrt(-2.0 * np.log(uniforms[:, :num]))
    return torch.from_numpy(radius * np.cos(2.0 * np.pi * uniforms[:, num:]))


def gaussian_noise_on_simplex(probs: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """Π_Δ(probs + σ·noise), row by row, for standard-normal `noise` of the same shape."""
    noisy = probs.double() + sigma * noise.to(probs.device, torch.float64)
    return project_onto_simplex(noisy).to(probs.dtype)


@register("gaussian", GaussianParams)
def build(params: GaussianParams, ctx):
    noise_seed = derive_seed("defense/noise", ctx.seed)

    def defend(probs, x):
        return gaussian_noise_on_simplex(probs, input_keyed_normals(x, noise_seed, probs.shape[1]), params.sigma)

    return defend
