"""Bounded waits on Ray: every `ray.get` in the trial and its clients names what it waits for and gives up
after a timeout, so a hung actor fails the trial with one line instead of blocking it forever."""
from __future__ import annotations

import ray
from ray.exceptions import GetTimeoutError


class TimedOut(TimeoutError):
    """A remote step did not finish within its timeout."""


def wait_for(refs, what: str, timeout_s: float):
    """ray.get(refs), or TimedOut('<what>: no answer after <timeout_s> s')."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except GetTimeoutError:
        raise TimedOut(f"timed out waiting for {what}: no answer after {timeout_s:g} s") from None
