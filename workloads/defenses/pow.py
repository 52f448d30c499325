"""Calibrated proof of work (Dziedzic et al., ICLR 2022): the answers are the victim's clean posteriors.

The work is elsewhere: the service's PoW gate (orchestrator/pow_gate.py) accounts each client's leakage
and withholds every answer until the client solves a hashcash puzzle of calibrated difficulty. Its knobs
are `workloads.pow.PowParams`, so `defense: {name: pow, params: {...}}` is swept like any defense.
"""
from workloads.defenses import register
from workloads.pow import PowParams


@register("pow", PowParams)
def build(params: PowParams, ctx):
    return lambda probs, x: probs
