"""Per-query information leakage, as in "Increasing the Cost of Model Extraction with Calibrated Proof of
Work" (Dziedzic, Kaleem, Lu, Papernot; ICLR 2022), official code `active_learning.py::PateKNN` and
`analysis/pate.py`.

PATE-kNN (`pknn`): the k training points nearest to the query in the victim's log-softmax space vote with
their true labels; the vote histogram n is charged the data-dependent Rényi-DP cost of the GNMax
mechanism (Papernot et al., ICLR 2018):

* Prop. 7: log q = min( logsumexp_{j != c*} log Φ̄((n_c* − n_j) / (√2 σ)), log(1 − 1/K) );
* Thm. 6 / Prop. 10: μ2 = σ √(−log q), μ1 = μ2 + 1, ε_i = μ_i / σ²; where μ2 > 1, λ < μ1, −log q > ε2 and
  log q ≤ (μ2 − 1) ε2 − μ2 [log(1 + 1/(μ1 − 1)) + log(1 + 1/(μ2 − 1))]:
  A = (1 − q) / (1 − (e^ε2 q)^((μ2 − 1)/μ2)), B = e^ε1 / q^(1/(μ1 − 1)),
  RDP(λ) = log[(1 − q) A^(λ−1) + q B^(λ−1)] / (λ − 1); elsewhere the data-independent λ / σ².
  Like the official `PrivateKnn` (`apply_data_independent_bound=False`), the data-dependent value is used
  where it applies even when it exceeds λ / σ²; `data_independent_bound=True` takes the minimum.
* RDP adds up over a client's queries (per order λ) and converts to (ε, δ)-DP by
  ε = min_λ RDP(λ) + log(1/δ) / (λ − 1) (Thm. 5).

The cheaper estimators charge the victim's softmax entropy (`entropy`) or 1 − (p1 − p2) with p1, p2 the
softmax of the two largest logits (`gap`, as the official `compute_utility_scores_gap`) and simply add up.

Every estimator exposes `increments(x)` (per-query rows to add to a client's running total) and
`cost(total)` (the cumulative cost of a total), so the service, the calibration and the worst-case
attacker all share one definition.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
from scipy.special import log_ndtr, logsumexp

from workloads.pow import ESTIMATORS

# The official orders: arange(2, 100, 0.5) and 200 log-spaced orders from 100 to 1000.
ORDERS = np.concatenate((np.arange(2, 100, 0.5), np.logspace(np.log10(100), np.log10(1000), num=200)))
# δ per dataset (the official code: 1e-5 for MNIST, Fashion-MNIST, CIFAR-10; 1e-6 SVHN; 1e-8 ImageNet).
# Heist's other datasets take 1e-5, below 1 / (training-set size) for all of them.
DELTAS = {"svhn": 1e-6, "imagenet": 1e-8}
DEFAULT_DELTA = 1e-5


def delta_for(dataset: str) -> float:
    return DELTAS.get(dataset, DEFAULT_DELTA)


def log_q_gnmax(votes: np.ndarray, sigma: float) -> np.ndarray:
    """Prop. 7 of PATE 2018 for each row of `votes` (B, K): an upper bound on log Pr[GNMax ≠ argmax]."""
    votes = np.asarray(votes, dtype=np.float64)
    b, k = votes.shape
    top = votes.argmax(1)
    gaps = votes[np.arange(b), top][:, None] - votes
    log_sf = log_ndtr(-gaps / (math.sqrt(2.0) * sigma))       # log Φ̄(gap / (√2 σ))
    log_sf[np.arange(b), top] = -np.inf                       # the argmax itself is left out
    return np.minimum(logsumexp(log_sf, axis=1), math.log(1.0 - 1.0 / k))


def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − e^x) for x ≤ 0, stable at both ends."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(x < -1.0, np.log1p(-np.exp(np.minimum(x, -1.0))), np.log(-np.expm1(np.minimum(x, 0.0))))


def rdp_gnmax(log_q: np.ndarray, sigma: float, orders: np.ndarray = ORDERS,
              data_independent_bound: bool = False) -> np.ndarray:
    """Data-dependent RDP of GNMax (Thm. 6, Prop. 10 of PATE 2018) per query (rows) and order (columns)."""
    log_q = np.atleast_1d(np.asarray(log_q, dtype=np.float64))
    orders = np.asarray(orders, dtype=np.float64)
    var = sigma ** 2
    rdp = np.tile(orders / var, (len(log_q), 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        mu2 = np.sqrt(var * -log_q)
        mu1 = mu2 + 1.0
        eps1, eps2 = mu1 / var, mu2 / var
        in_range = (mu1[:, None] > orders) & (mu2[:, None] > 1.0)
        applies = (in_range.any(1) & (-log_q > eps2)
                   & (log_q <= (mu2 - 1.0) * eps2 - mu2 * (np.log1p(1.0 / (mu1 - 1.0)) + np.log1p(1.0 / (mu2 - 1.0)))))
        rows = np.flatnonzero(applies)
        if len(rows):
            lq, m1, m2, e1, e2 = (a[rows, None] for a in (log_q, mu1, mu2, eps1, eps2))
            log1mq = _log1mexp(lq)
            log_a = (orders - 1.0) * (log1mq - _log1mexp((lq + e2) * (1.0 - 1.0 / m2)))
            log_b = (orders - 1.0) * (e1 - lq / (m1 - 1.0))
            dependent = np.logaddexp(log1mq + log_a, lq + log_b) / (orders - 1.0)
            if data_independent_bound:
                dependent = np.minimum(dependent, rdp[rows])
            sub = rdp[rows]
            mask = in_range[rows]
            sub[mask] = dependent[mask]
            rdp[rows] = sub
    rdp[np.isneginf(log_q)] = 0.0                               # a deterministic answer costs nothing
    return rdp


def rdp_to_epsilon(rdp: np.ndarray, delta: float, orders: np.ndarray = ORDERS) -> np.ndarray:
    """(ε, δ)-DP from RDP over `orders` (last axis): min_λ RDP(λ) + log(1/δ) / (λ − 1) (PATE 2018, Thm. 5)."""
    return np.min(np.asarray(rdp) + math.log(1.0 / delta) / (np.asarray(orders) - 1.0), axis=-1)


def log_softmax_outputs(model: nn.Module, x, device: torch.device, batch: int = 1024) -> torch.Tensor:
    """The victim's log-softmax (N, K) for images x, on `device`, in float64."""
    xt = x if torch.is_tensor(x) else torch.tensor(np.asarray(x, dtype=np.float32))
    with torch.inference_mode():
        return torch.cat([torch.log_softmax(model(c.to(device)).double(), 1) for c in xt.split(batch)])


class Estimator:
    """Base: the victim's log-softmax of a query batch, and how increments turn into a cost."""

    width = 1

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu"):
        self.model, self.device = model, torch.device(device)

    def increments(self, x) -> np.ndarray:
        """Per-query rows (B, width) that add up to a client's running total."""
        return self._rows(log_softmax_outputs(self.model, x, self.device))

    def cost(self, total: np.ndarray) -> np.ndarray:
        """The cumulative cost of running totals (..., width)."""
        return np.asarray(total)[..., 0]

    def _rows(self, log_p: torch.Tensor) -> np.ndarray:
        raise NotImplementedError


class EntropyCost(Estimator):
    """Σ over queries of the victim's softmax entropy (nats)."""

    def _rows(self, log_p):
        return (-(log_p.exp() * log_p).nan_to_num().sum(1, keepdim=True)).cpu().numpy()


class GapCost(Estimator):
    """Σ over queries of 1 − (p1 − p2), p1, p2 the softmax of the two largest logits."""

    def _rows(self, log_p):
        top2 = torch.softmax(log_p.topk(2, dim=1).values, 1)
        return (1.0 - (top2[:, 0] - top2[:, 1])).unsqueeze(1).cpu().numpy()


class PateKnn(Estimator):
    """PATE-kNN leakage: GNMax RDP of the votes of the k nearest victim-training points (see module doc)."""

    width = len(ORDERS)

    def __init__(self, model: nn.Module, train_reps: torch.Tensor, train_labels: torch.Tensor, num_classes: int, *,
                 k: int = 300, sigma: float = 28.0, delta: float = DEFAULT_DELTA, data_independent_bound: bool = False,
                 device: torch.device | str = "cpu", max_elements: int = 1 << 24):
        super().__init__(model, device)
        if not 1 <= k <= len(train_reps):
            raise ValueError(f"defense.params.k: expected 1..{len(train_reps)} (the victim's training points), got {k}")
        reps = torch.as_tensor(train_reps, dtype=torch.float64).to(self.device)
        self.reps_t, self.sq_norms, self.n_train = reps.T.contiguous(), (reps ** 2).sum(1), len(reps)
        self.labels = torch.as_tensor(train_labels, dtype=torch.int64).to(self.device)
        self.num_classes, self.k, self.sigma, self.delta = num_classes, int(k), float(sigma), float(delta)
        self.data_independent_bound = data_independent_bound
        self.max_elements = max_elements

    def votes(self, log_p: torch.Tensor) -> np.ndarray:
        """Vote histograms (B, K) of the k nearest training points (L2 in log-softmax space).

        Distances rank by |t|² − 2 r·t (|r|² is the same for every t), in chunks of training points sized
        so that one chunk's block holds at most `max_elements` entries; the running k best merge per chunk."""
        b = len(log_p)
        chunk = max(1024, self.max_elements // max(b, 1))
        best_d = best_i = None
        for lo in range(0, self.n_train, chunk):
            hi = min(lo + chunk, self.n_train)
            d = torch.addmm(self.sq_norms[lo:hi], log_p, self.reps_t[:, lo:hi], alpha=-2.0)
            idx = torch.arange(lo, hi, device=self.device).expand(b, -1)
            if best_d is not None:
                d, idx = torch.cat([best_d, d], 1), torch.cat([best_i, idx], 1)
            best_d, pos = d.topk(min(self.k, d.shape[1]), dim=1, largest=False)
            best_i = idx.gather(1, pos)
        votes = torch.zeros((b, self.num_classes), dtype=torch.float64, device=self.device)
        votes.scatter_add_(1, self.labels[best_i], torch.ones_like(best_d))
        return votes.cpu().numpy()

    def _rows(self, log_p):
        return rdp_gnmax(log_q_gnmax(self.votes(log_p), self.sigma), self.sigma,
                         data_independent_bound=self.data_independent_bound)

    def cost(self, total):
        return rdp_to_epsilon(total, self.delta)


def train_representations(model: nn.Module, x_train: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """The victim's log-softmax of every training point (the PATE-kNN 'teachers'), float64 on the CPU."""
    return log_softmax_outputs(model, x_train, torch.device(device)).cpu()


def build_estimator(name: str, model: nn.Module, *, train_reps=None, train_labels=None, num_classes: int = 10,
                    k: int = 300, sigma: float = 28.0, delta: float = DEFAULT_DELTA,
                    data_independent_bound: bool = False, device: torch.device | str = "cpu") -> Estimator:
    if name == "pknn":
        return PateKnn(model, train_reps, train_labels, num_classes, k=k, sigma=sigma, delta=delta,
                       data_independent_bound=data_independent_bound, device=device)
    if name == "entropy":
        return EntropyCost(model, device)
    if name == "gap":
        return GapCost(model, device)
    raise ValueError(f"defense.params.estimator: unknown estimator {name!r}; expected one of {list(ESTIMATORS)}")
