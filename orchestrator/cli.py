"""The `heist` command line (also `python -m orchestrator`).

User errors (a bad YAML, an unknown name, an unreachable server) print one line and exit 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys

from workloads.config import ConfigError


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="heist", description="Model-stealing attacks and defenses, measured at scale.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trial", help="run one trial (victim + defense + attacks) and print its metrics")
    t.add_argument("config", help="trial YAML (or a sweep YAML: its first point is run)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set defense.name=dcp --set defense.params.beta=0.5")
    t.add_argument("--json", help="also write the metrics to this JSON file")

    b = sub.add_parser("bench", help="serving benchmark: VictimService throughput vs raw batched forward")
    b.add_argument("--dataset", default="fashion_mnist")
    b.add_argument("--workers", default="1,4,8")
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--images", type=int, default=40960, help="images each run sends in total")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "trial":
            from orchestrator.trial import main as run
        elif args.command == "bench":
            from orchestrator.bench import main as run
        return run(args) or 0
    except (ConfigError, UserError) as e:
        print(f"heist {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
