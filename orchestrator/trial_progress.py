"""What `heist trial` shows while it runs: one line per phase (victim, benign pass, each attack run).

On a terminal the running phase is a live line, redrawn a few times a second, with a bar for the attack's
queries (read from its driver-side query client) and the epoch of the training running now (every
`workloads.training.fit` inside the phase reports it); when the phase ends the line stays with its
duration. Off a terminal (a log file, CI) only the finished lines are printed:

    victim        fashion_mnist lenet5, from the cache                                     0.4 s
    benign pass   10,000 test images                                                        2.1 s
    attack knockoff r0  queries [########################] 10,000/10,000  epoch 20/20   45.2 s
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import TextIO

BAR_WIDTH = 24


def duration(seconds: float) -> str:
    """`14.2 s`, `3 min 05 s`, `1 h 02 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """`[######..................]`: done/total as a fixed-width bar (full when total is 0)."""
    filled = width if total <= 0 else max(0, min(width, width * done // total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Phase:
    """The state of one running phase: its label, an optional note, its query client and training epoch."""

    def __init__(self, label: str, client=None):
        self.label, self.client, self.note = label, client, ""
        self.epoch: tuple[int, int] | None = None
        self.t0 = time.perf_counter()

    def on_epoch(self, done: int, total: int) -> None:
        self.epoch = (done, total)

    def line(self) -> str:
        parts = [f"{self.label:<13}"]
        if self.note:
            parts.append(self.note)
        if self.client is not None:
            used, budget = int(self.client.used), int(self.client.budget)
            parts.append(f"queries {bar(used, budget)} {used:,}/{budget:,}")
        if self.epoch:
            parts.append(f"epoch {self.epoch[0]}/{self.epoch[1]}")
        parts.append(duration(time.perf_counter() - self.t0))
        return "  ".join(parts)


class TrialProgress:
    """Phase lines on `out` (None: silent, as inside a sweep's Tune trials)."""

    def __init__(self, out: TextIO | None = None, every_s: float = 0.25):
        self.out, self.every_s = out, every_s
        self.live = out is not None and out.isatty() and os.environ.get("TERM") != "dumb"

    @contextlib.contextmanager
    def phase(self, label: str, client=None):
        """Run a phase: yields its `Phase` (set `.note` to say what it did); `client` has `used` and `budget`."""
        from workloads.training import reporting_epochs

        state = Phase(label, client)
        stop = threading.Event()
        ticker = threading.Thread(target=self._redraw, args=(state, stop), daemon=True)
        if self.live:
            ticker.start()
        failed = False
        try:
            with reporting_epochs(state.on_epoch):
                yield state
        except BaseException:
            failed = True
            raise
        finally:
            stop.set()
            if ticker.is_alive():
                ticker.join()
            if self.out is not None:
                end = "\r\x1b[K" if self.live else ""
                self.out.write(end + state.line() + ("  FAILED" if failed else "") + "\n")
                self.out.flush()

    def _redraw(self, state: Phase, stop: threading.Event) -> None:
        while not stop.wait(self.every_s):
            self.out.write("\r\x1b[K" + state.line())
            self.out.flush()
