"""The `heist` command line (also `python -m orchestrator`).

User errors (a bad YAML, an unknown name, an unreachable server) print one line and exit 2; no traceback.
"""
from __future__ import annotations

import argparse
import sys

from orchestrator.errors import UserError
from workloads.config import ConfigError

__all__ = ["main", "UserError"]


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
    b.add_argument("--max-batch", type=int, help="images per served batch (default: tuned per dataset)")
    b.add_argument("--forward-batch", type=int, help="forward chunk size; 0 = whole served batch")
    b.add_argument("--max-wait-ms", type=float, help="batcher wait to fill a batch")
    b.add_argument("--in-flight", type=int, help="requests each worker keeps in flight")
    b.add_argument("--num-cpus", type=float, help="CPUs (and torch threads) of the service actor")
    b.add_argument("--repeats", type=int, help="runs per setting; the best is reported")
    b.add_argument("--defenses", action="store_true",
                   help="instead: each output defense's added cost per image at a fixed batch (--batch)")

    r = sub.add_parser("run", help="run a sweep: Tune + Optuna trials, MLflow runs, the Pareto frontier")
    r.add_argument("config", help="sweep YAML, e.g. sweeps/quickstart.yaml")
    v = sub.add_parser("validate", help="check a sweep YAML; print the resolved config or every error")
    v.add_argument("config", help="sweep YAML")
    s = sub.add_parser("resume", help="continue an interrupted sweep")
    s.add_argument("sweep", help="the sweep directory `heist run` printed, or a sweep name (its latest run)")
    f = sub.add_parser("pareto", help="recompute and print a finished sweep's frontier from MLflow")
    f.add_argument("sweep", help="MLflow experiment name (its latest sweep) or parent run id")
    f.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    return p


def _validate(args) -> int:
    from orchestrator.sweep_config import cluster_resources, dump, load, plan, summary

    cfg, warning = plan(load(args.config), cluster_resources())
    if warning:
        print(f"heist validate: warning: {warning}", file=sys.stderr)
    print(dump(cfg) + summary(cfg))
    return 0


def _run(args) -> int:
    from orchestrator.sweep import run
    from orchestrator.sweep_config import load

    return run(load(args.config))


def _resume(args) -> int:
    from orchestrator.sweep import resume

    return resume(args.sweep)


def _pareto(args) -> int:
    from orchestrator.sweep_config import resolve_tracking_uri
    from orchestrator.tracking import check_reachable, find_sweep, print_frontier

    uri = resolve_tracking_uri(args.tracking_uri)
    check_reachable(uri)
    tracker = find_sweep(uri, args.sweep)
    cfg = tracker.sweep_config()
    print_frontier(cfg, tracker, tracker.report_frontier(cfg))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "trial":
            from orchestrator.trial import main as run
        elif args.command == "bench":
            from orchestrator.bench import main as run
        else:
            run = {"run": _run, "validate": _validate, "resume": _resume, "pareto": _pareto}[args.command]
        return run(args) or 0
    except ConfigError as e:       # one line per error, each with its YAML path
        for error in e.errors:
            print(f"heist {args.command}: error: {error}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"heist {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
