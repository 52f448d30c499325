"""What a person sees while a sweep runs: one line per finished trial and a live line for what runs now.

Replaces Tune's status table (Tune runs with verbose=0; what it still prints and its log, with Optuna's,
go to `<sweep dir>/tune.log`: `quiet_tune`). A finished trial prints

    [ 3/10] dcp beta=0.7        defended_accuracy 0.9387  stolen_accuracy 0.7744 ± 0.0120   14.2 s  ETA 1 min 40 s

(the sweep's objectives, as mean ± sd when the trial has repeats); on a terminal a live line below
shows the trials running now and how long each has run. `Progress` is a Tune callback; Tune pickles it
with the experiment state, so it keeps no open stream and restarts its clock in `setup` (on resume).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from ray import tune

from orchestrator.trial_progress import duration

LIVE_EVERY_S = 1.0
OUT = None        # the terminal while Tune's own stdout goes to tune.log (see quiet_tune); None: sys.stdout


def _out():
    return OUT or sys.stdout


def point_label(defense: dict, keys, hardening: dict | None = None) -> str:
    """`dcp beta=0.7`: the defense and its searched hyperparameters, with the victim recipe's (`hardening`, when the
    sweep searches it) as `victim.hardening.<name>`, as MLflow names them."""
    from orchestrator.sweep_config import HARDENING_PREFIX

    params = defense.get("params", {}) | {HARDENING_PREFIX + k: v for k, v in (hardening or {}).get("params", {}).items()}
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items() if k in keys)
    return f"{defense['name']} {shown}".strip()


def objectives_text(metrics: dict, names: list[str]) -> str:
    """`defended_accuracy 0.9387  stolen_accuracy 0.7744 ± 0.0120`: each objective, with its sd when there is one."""
    def one(name: str) -> str:
        if name not in metrics:
            return f"{name} -"
        metric, _, attack = name.partition("/")
        std = metrics.get(f"{metric}_std/{attack}" if attack else f"{metric}_std")
        return f"{name} {metrics[name]:.4f}" + (f" ± {std:.4f}" if std is not None else "")

    return "  ".join(one(n) for n in names)


class Progress(tune.Callback):
    """Tune callback printing Heist's progress lines (see the module docstring)."""

    def __init__(self, total: int, objectives: list[str], label_keys: dict[str, list[str]]):
        self.total, self.objectives, self.label_keys = total, objectives, label_keys
        self.t0, self.done_here, self.started, self.last_live = time.time(), 0, {}, 0.0

    def setup(self, **info):
        self.t0, self.done_here, self.started, self.last_live = time.time(), 0, {}, 0.0

    @staticmethod
    def _tty() -> bool:
        return _out().isatty() and os.environ.get("TERM") != "dumb"

    def _label(self, trial) -> str:
        defense = trial.config["defense"]
        return point_label(defense, self.label_keys.get(defense["name"], defense.get("params", {})),
                           trial.config.get("hardening"))

    def _clear_live(self) -> None:
        if self._tty():
            _out().write("\r\x1b[K")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.time()
        if not self._tty():
            print(f"        started {self._label(trial)}", file=_out(), flush=True)

    def _finished(self, trials, trial, failed: bool) -> None:
        done = sum(1 for t in trials if t is trial or t.status in ("TERMINATED", "ERROR"))
        self.done_here += 1
        seconds = time.time() - self.started.pop(trial.trial_id, time.time())
        rate = (time.time() - self.t0) / self.done_here
        left = max(0, self.total - done)
        eta = f"ETA {duration(rate * left)}" if left else "done"
        outcome = "FAILED (its error is in tune.log)" if failed else objectives_text(trial.last_result or {},
                                                                                     self.objectives)
        width = len(str(self.total))
        self._clear_live()
        print(f"[{done:>{width}}/{self.total}] {self._label(trial):<30} {outcome}   {duration(seconds)}  {eta}",
              file=_out(), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finished(trials, trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finished(trials, trial, failed=True)

    def on_step_end(self, iteration, trials, **info):
        now = time.time()
        if not self._tty() or now - self.last_live < LIVE_EVERY_S:
            return
        self.last_live = now
        running = [t for t in trials if t.trial_id in self.started]
        done = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        parts = [f"{self._label(t)} ({duration(now - self.started[t.trial_id])})" for t in running]
        line = f"running: {', '.join(parts) or 'waiting for resources'} | {done}/{self.total} done"
        try:
            width = os.get_terminal_size(_out().fileno()).columns
        except (OSError, ValueError):
            width = 120
        _out().write("\r\x1b[K" + line[:width - 1])
        _out().flush()


@contextlib.contextmanager
def quiet_tune(sweep_dir):
    """While Tune runs: its printed output (experiment box, TensorBoard hints) and Tune's and Optuna's log records
    go to `<sweep dir>/tune.log`; Progress prints to the terminal it had."""
    import optuna

    global OUT
    names = ("ray.tune", "ray.train", "optuna")
    with open(os.path.join(sweep_dir, "tune.log"), "a", buffering=1) as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in names:
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).propagate = False
        optuna.logging.disable_default_handler()
        OUT = sys.stdout
        try:
            with contextlib.redirect_stdout(log):
                yield
        finally:
            OUT = None
            for name in names:
                logging.getLogger(name).removeHandler(handler)
                logging.getLogger(name).propagate = True
            optuna.logging.enable_default_handler()
