"""The proof-of-work gate of "Increasing the Cost of Model Extraction with Calibrated Proof of Work"
(Dziedzic et al., ICLR 2022), live in the serving path (the paper's own numbers mostly replay logs offline).

`PowGate` implements the VictimService's `Gate`. For every answered batch it

1. charges the client's leakage (`workloads.pow.pate_knn`: PATE-kNN RDP summed per client → ε, or the
   entropy / gap costs), in its own thread so the service keeps accepting requests;
2. turns it into extra time T (calibration against the benign curve Ĉ(n)) and T into leading zero bits
   at the hash rate its minter measured when the service started;
3. `real` mode: answers with a `Challenge` and keeps the answer in `record.state`; the client mints a
   stamp in its own actor and calls the service's `redeem(client, ticket, stamp)`, which releases the
   answer once. Forged, replayed, expired, under-difficulty, wrong-client and malformed stamps raise a
   one-line `InvalidStamp`; the pending answer stays for a correct stamp (except when expired).
   `simulated` mode: the same challenge/redeem round trip, but the client mints nothing and redeems without a
   stamp; 2^bits / rate seconds are booked instead (so both modes pay the same protocol overhead).

Each client's totals are in `record.state["ledger"]` (the service's ledger shows them): pow_cost,
pow_batches, pow_bits_sum/max, pow_expected_hashes/seconds, pow_accounting_seconds, pow_redeemed,
pow_rejected, pow_rate, and `pow_log` (per batch: seq, queries so far, cost, bits, target seconds; the
trial keeps it in `TrialResult.info["pow_log"]`).

This module imports no torch at the top: client actors import `Challenge` from it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import urllib.parse

import numpy as np

from workloads.pow import hashcash


class InvalidStamp(ValueError):
    """A stamp the gate refuses; nothing is released."""


@dataclasses.dataclass(frozen=True)
class Challenge:
    """The service's reply: solve `challenge` to `bits` zero bits, then redeem `ticket` (simulated: redeem it
    without a stamp; the gate books the expected minting time instead)."""

    ticket: str
    challenge: str
    bits: int
    simulated: bool = False


@dataclasses.dataclass
class _Pending:
    answer: np.ndarray
    challenge: str
    bits: int
    issued: float


@dataclasses.dataclass
class _ClientPow:
    total: np.ndarray
    pending: dict = dataclasses.field(default_factory=dict)
    spent: set = dataclasses.field(default_factory=set)


class PowGate:
    """Calibrated proof-of-work gate; `params` are `workloads.pow.PowParams`, `accounting` a
    `workloads.pow.calibration.Accounting` (estimator settings, training representations, benign curve)."""

    def __init__(self, params, accounting, clock=time.time, hash_rate: float | None = None):
        """`hash_rate`: the clients' minting rate (hashes/s) to size puzzles by; None measures this machine's
        when the service starts (give it when clients run on other hardware, or to pin the difficulty)."""
        self.params, self.accounting, self.clock = params, accounting, clock
        self.rate, self.estimator, self._pool = hash_rate, None, None

    def bind(self, service) -> None:
        """Called once by the service at start: the estimator uses its model and device; measure the hash rate."""
        import torch
        from concurrent.futures import ThreadPoolExecutor

        self.estimator = self.accounting.build(service.model, service.device)
        self.rate = self.rate or hashcash.mint_rate()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pow-accounting",
                                        initializer=torch.set_num_threads, initargs=(service.num_threads,))

    def _state(self, record) -> _ClientPow:
        if "pow" not in record.state:
            record.state["pow"] = _ClientPow(np.zeros(self.estimator.width))
            record.state["ledger"] = {"pow_cost": 0.0, "pow_batches": 0, "pow_bits_sum": 0, "pow_bits_max": 0,
                                      "pow_expected_hashes": 0.0, "pow_expected_seconds": 0.0,
                                      "pow_accounting_seconds": 0.0, "pow_redeemed": 0, "pow_rejected": 0,
                                      "pow_rate": self.rate, "pow_log": []}
        return record.state["pow"]

    def _increments(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """The batch's leakage rows and the seconds the accounting itself ran (not its wait in the pool, which
        overlaps other requests': summed per client, waits would exceed the client's own wall time)."""
        t0 = time.perf_counter()
        rows = self.estimator.increments(x)
        return rows, time.perf_counter() - t0

    async def release(self, record, request, answer: np.ndarray):
        from workloads.pow.calibration import bits_for, extra_seconds

        p = self.params
        rows, accounting_s = await asyncio.get_running_loop().run_in_executor(self._pool, self._increments, request.x)
        st, ledger = self._state(record), record.state["ledger"]
        st.total = st.total + rows.sum(0)
        cost = float(self.estimator.cost(st.total))
        per_batch = extra_seconds(cost, record.images, self.accounting.curve, base=p.base, t_min=p.t_min,
                                  t_max=p.t_max, offset=p.offset)
        seconds = per_batch * len(request.x) / p.batch_queries
        bits = bits_for(seconds, self.rate)
        ledger["pow_accounting_seconds"] += accounting_s
        ledger["pow_cost"] = cost
        ledger["pow_batches"] += 1
        ledger["pow_bits_sum"] += bits
        ledger["pow_bits_max"] = max(ledger["pow_bits_max"], bits)
        ledger["pow_expected_hashes"] += 2.0 ** bits
        ledger["pow_expected_seconds"] += 2.0 ** bits / self.rate
        ledger["pow_log"].append({"seq": request.seq, "queries": record.images, "privacy_cost": cost,
                                  "pow_bits": bits, "pow_target_s": seconds})
        ticket = secrets.token_hex(8)
        now = self.clock()
        if p.mode == "simulated":
            st.pending[ticket] = _Pending(answer, "", bits, now)
            return Challenge(ticket, "", bits, simulated=True)
        resource = f"{urllib.parse.quote(record.client_id, safe='')}/{ticket}"
        challenge = hashcash.challenge(bits, resource, now=now)
        st.pending[ticket] = _Pending(answer, challenge, bits, now)
        return Challenge(ticket, challenge, bits)

    def redeem(self, record, ticket, stamp) -> np.ndarray:
        """The answer withheld behind `ticket`, once, if `stamp` solves its challenge; else InvalidStamp.

        Runs on the service's event loop without awaiting, so check-and-release is atomic: of concurrent
        redemptions of one ticket exactly one succeeds."""
        st, ledger = self._state(record), record.state["ledger"]

        def reject(kind: str, why: str):
            ledger["pow_rejected"] += 1
            return InvalidStamp(f"client {record.client_id!r}: {kind} stamp: {why}")

        pending = st.pending.get(ticket)
        if pending is not None and pending.challenge == "" and stamp is None:      # simulated: nothing to verify
            del st.pending[ticket]
            st.spent.add(ticket)
            ledger["pow_redeemed"] += 1
            return pending.answer
        try:
            s = hashcash.parse(stamp)
        except hashcash.MalformedStamp as e:
            raise reject("malformed", str(e)) from None
        owner, _, bound_ticket = s.resource.rpartition("/")
        owner = urllib.parse.unquote(owner)
        if owner != record.client_id:
            raise reject("wrong-client", f"it is bound to client {owner!r}")
        if ticket != bound_ticket:
            raise reject("forged", f"it is bound to ticket {bound_ticket!r}, not {ticket!r}")
        if ticket in st.spent:
            raise reject("replayed", f"ticket {ticket} was already redeemed")
        pending = st.pending.get(ticket)
        if pending is None:
            raise reject("forged", f"no challenge {ticket!r} was issued to this client")
        if self.clock() - pending.issued > self.params.stamp_ttl_s:
            del st.pending[ticket]
            raise reject("expired", f"challenge {ticket} was issued {self.clock() - pending.issued:.1f} s ago "
                                    f"(limit {self.params.stamp_ttl_s:g} s); its answer is withdrawn")
        if s.bits < pending.bits:
            raise reject("under-difficulty", f"it claims {s.bits} bits, the challenge requires {pending.bits}")
        if s.challenge != pending.challenge:
            raise reject("forged", "it does not answer the challenge issued for this ticket")
        zeros = hashcash.stamp_zero_bits(stamp)
        if zeros < pending.bits:
            raise reject("under-difficulty", f"its SHA-1 has {zeros} leading zero bits, {pending.bits} required")
        del st.pending[ticket]
        st.spent.add(ticket)
        ledger["pow_redeemed"] += 1
        return pending.answer


# ------------------------------------------------------------------------------------------ trial side
def setup(cfg, victim):
    """(gate, leakage oracle) for a trial whose defense is `pow`, else (None, None). The oracle is an
    in-process estimator of the same setting, given to worst-case adaptive attackers only."""
    from workloads.defenses import REGISTRY
    from workloads.config import parse
    from workloads.pow.calibration import prepare

    if cfg.defense.name != "pow":
        return None, None
    params = parse(REGISTRY["pow"][0], cfg.defense.params, "defense.params")
    accounting = prepare(params, victim, cfg.cache_dir)
    return PowGate(params, accounting), accounting.build(victim.model)


def _group_sum(clients, fn) -> float:
    return float(sum(fn(c) for c in clients))


def trial_metrics(mode: str, ledger: dict, stats: dict, groups: dict[str, list[str]]) -> dict[str, float]:
    """PoW metrics of a trial. `groups` maps "benign" and each attack key to its client ids; `stats` are the
    clients' own stats (wall seconds in queries, minted hashes and seconds).

    Total time with PoW over without, per group: real mode: wall / (wall − minting − accounting); simulated:
    (wall + booked 2^bits/rate) / (wall − accounting). Overlapping in-flight requests make the real-mode
    denominator a lower bound, so real overheads lean high."""
    def pow_seconds(c):
        return stats[c]["mint_seconds"] if mode == "real" else ledger[c]["pow_expected_seconds"]

    def total(c):
        return stats[c]["seconds"] + (0.0 if mode == "real" else pow_seconds(c))

    def without(c):
        return max(total(c) - pow_seconds(c) - ledger[c]["pow_accounting_seconds"], 1e-9)

    def summary(clients) -> dict[str, float]:
        batches = _group_sum(clients, lambda c: ledger[c]["pow_batches"])
        return {"pow_overhead": _group_sum(clients, total) / _group_sum(clients, without),
                "privacy_cost": max(ledger[c]["pow_cost"] for c in clients),
                "pow_bits_mean": _group_sum(clients, lambda c: ledger[c]["pow_bits_sum"]) / max(batches, 1),
                "pow_bits_max": max(ledger[c]["pow_bits_max"] for c in clients),
                "pow_hashes": _group_sum(clients, lambda c: stats[c]["hashes"] if mode == "real"
                                         else ledger[c]["pow_expected_hashes"]),
                "pow_mint_seconds": _group_sum(clients, pow_seconds)}

    groups = {name: [c for c in clients if c in ledger and "pow_cost" in ledger[c]] for name, clients in groups.items()}
    groups = {name: clients for name, clients in groups.items() if clients}
    out: dict[str, float] = {}
    if "benign" in groups:
        benign = summary(groups["benign"])
        out |= {"pow_benign_overhead": benign.pop("pow_overhead"), "privacy_cost_benign": benign.pop("privacy_cost")}
        out |= {f"{k}_benign": v for k, v in benign.items()}
    attacks = {k: summary(clients) for k, clients in groups.items() if k != "benign"}
    for key, values in attacks.items():
        out |= {f"{k}/{key}": v for k, v in values.items()}
    if attacks:   # the attack slowed least / looking most benign: the defender's worst case
        out["pow_attacker_overhead"] = min(v["pow_overhead"] for v in attacks.values())
        out["privacy_cost_attacker"] = min(v["privacy_cost"] for v in attacks.values())
        every = summary([c for k, clients in groups.items() if k != "benign" for c in clients])
        out |= {f"{k}_attacker": every[k] for k in ("pow_bits_mean", "pow_bits_max", "pow_hashes", "pow_mint_seconds")}
    rates = [ledger[c]["pow_rate"] for clients in groups.values() for c in clients]
    if rates:
        out["pow_hash_rate"] = float(rates[0])
    return out
