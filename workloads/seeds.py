"""Independent seed streams: every source of randomness gets its own seed, derived from (role, seed).

A role names one consumer of randomness ("victim/init", "substitute/init", "defense/surrogate", ...).
`derive_seed(role, seed)` hashes both with SHA-256, so two roles never share a stream even when the
user gives them the same integer seed: a thief never starts from the victim's weights, and MAD's
surrogate never equals the thief's starting point. Changing one role's seed changes nothing else.
"""
from __future__ import annotations

import hashlib

ROLES = (
    "data/split",            # which images form the victim's train / attacker pool / test splits
    "victim/init",           # victim initial weights
    "victim/train",          # victim mini-batch order (and any training-time sampling)
    "substitute/init",       # the thief's initial weights
    "substitute/train",      # the thief's mini-batch order
    "attack/sampling",       # which images the attack queries, noise, generator inputs
    "attack/generator",      # data-free attacks' generator initial weights (DFME, MAZE, MEGEX)
    "defense/surrogate",     # surrogate models a defense builds (MAD)
    "defense/misinformation",  # adaptive misinformation's model
    "defense/noise",         # output noise keyed by the input (gaussian); noise on explanations
    "explainer/sampling",    # SmoothGrad's input noise in the service's explanations
    "hardening/surrogate",   # training-time defenses' surrogates (InI's frozen student)
    "hardening/data",        # training-time defenses' own sampling (OOD batches, watermark sets)
)


def derive_seed(role: str, seed: int) -> int:
    """A 63-bit seed for `role`, independent of every other role's stream for the same `seed`."""
    if role not in ROLES:
        raise ValueError(f"seed role {role!r} is not one of {ROLES}")
    digest = hashlib.sha256(f"heist:{role}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
