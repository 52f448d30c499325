"""Budget curves measured both ways the field does (mebench's two tracks), for every attack.

`CurveClient` wraps an attack's QueryClient. With `cfg.curve: retrain` (track A) it keeps the transcript of
answered images and, once the queries pass a checkpoint c, trains a fresh substitute (`cfg.train`, the attack
seed's init) on the first c answered images alone and reports it; an image queried again (JBDA's re-labelling)
counts once, with its latest answer. With `cfg.curve: online` (track B) it reports the attack's own substitute
whenever the attack hands it over (`online(substitute)`, e.g. after each round); the trial logs it at the first
checkpoint the queries have reached. Without a checkpoint callback it only forwards queries.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from workloads.attacks.transfer import train_on_answers


class CurveClient:
    """A QueryClient that measures the budget curve of one attack run (see the module docstring)."""

    def __init__(self, client, cfg, victim, checkpoint=None):
        self.client, self.cfg, self.victim, self.checkpoint = client, cfg, victim, checkpoint
        self.pending = list(cfg.checkpoints) if checkpoint is not None and cfg.curve == "retrain" else []
        self.images: list[torch.Tensor] = []
        self.answers: list[np.ndarray] = []
        self.ids: list[np.ndarray] = []

    @property
    def budget(self) -> int:
        return self.client.budget

    @property
    def used(self) -> int:
        return self.client.used

    @property
    def remaining(self) -> int:
        return self.client.budget - self.client.used

    def query(self, x: torch.Tensor, ids: np.ndarray | None = None) -> np.ndarray:
        """The client's answers for x; `ids` name the points (an id queried again replaces its answer)."""
        self._retrain_passed(self.used)     # checkpoints the previous query reached exactly
        answers = self.client.query(x.numpy() if isinstance(x, torch.Tensor) else x)
        if self.pending:
            start = sum(len(a) for a in self.answers)
            self.images.append(torch.as_tensor(x))
            self.answers.append(answers)
            self.ids.append(np.asarray(ids) if ids is not None else np.arange(start, start + len(x)) + (1 << 40))
            self._retrain_passed(self.used - 1)
        return answers

    def online(self, substitute: nn.Module) -> None:
        """The attack's own substitute after `used` queries (reported with `curve: online`)."""
        if self.checkpoint is not None and self.cfg.curve == "online":
            self.checkpoint(self.used, substitute)

    def finish(self, substitute: nn.Module, from_scratch: bool = False) -> None:
        """The attack's final substitute. `from_scratch`: it was trained fresh (cfg.train, attack seed) on every
        answer, so it stands for the retrain point at the full budget without training it again."""
        if self.checkpoint is None:
            return
        if self.cfg.curve == "online":
            self.checkpoint(self.used, substitute)
            return
        last = [c for c in self.pending if c == self.used] if from_scratch else []
        self._retrain_passed(self.used - len(last))
        for c in last:
            self.pending.remove(c)
            self.checkpoint(c, substitute)

    def _retrain_passed(self, below: int) -> None:
        """Report a fresh substitute for every pending checkpoint c <= below."""
        while self.pending and self.pending[0] <= below:
            c = self.pending.pop(0)
            x, y = self._first(c)
            arch = self.cfg.substitute_arch or self.victim.arch
            fresh = train_on_answers(x, y, self.cfg.labels, arch, self.victim, self.cfg.train, self.cfg.seed)
            self.checkpoint(c, fresh)

    def _first(self, c: int) -> tuple[torch.Tensor, np.ndarray]:
        """The first c answered images, each id once with its latest answer, in the order last answered."""
        x = torch.cat(self.images)[:c]
        y = np.concatenate(self.answers)[:c]
        ids = np.concatenate(self.ids)[:c]
        _, last_rev = np.unique(ids[::-1], return_index=True)
        keep = np.sort(len(ids) - 1 - last_rev)
        return x[torch.from_numpy(keep)], y[keep]
