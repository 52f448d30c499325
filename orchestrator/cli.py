"""The `heist` command line (also `python -m orchestrator`).

User errors (a bad YAML, an unknown name, an unreachable server) print one line and exit 2; no traceback.
Ctrl-C that reaches the command (not the one a sweep handles itself) prints one line and exits 130.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

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
    b.add_argument("--workers", default="1,4,8,16", help="worker counts, comma-separated")
    b.add_argument("--batch", default="256,16", help="client batch sizes, comma-separated (--defenses, --pow, "
                                                     "--serve: the first)")
    b.add_argument("--images", type=int, default=40960, help="images each run sends in total (with --serve: "
                                                             "20480 unless given)")
    b.add_argument("--max-batch", type=int, help="images per served batch (default: tuned per dataset)")
    b.add_argument("--forward-batch", type=int, help="forward chunk size; 0 = whole served batch")
    b.add_argument("--max-wait-ms", type=float, help="batcher wait to fill a batch")
    b.add_argument("--in-flight", type=int, help="requests each worker keeps in flight")
    b.add_argument("--num-cpus", type=float, help="CPUs (and torch threads) of the service actor")
    b.add_argument("--repeats", type=int, help="runs per setting; the best is reported")
    b.add_argument("--defenses", action="store_true",
                   help="instead: each output defense's added cost per image at a fixed batch (--batch)")
    b.add_argument("--pow", action="store_true",
                   help="proof of work instead: minter vs raw SHA-1 rate, leakage accounting vs forward per batch")
    b.add_argument("--sweep", action="store_true",
                   help="instead: a sweep's wall time vs the same trials' work in one plain process")
    b.add_argument("--sweep-config", dest="config", help="--sweep: the sweep YAML (default sweeps/quickstart.yaml)")
    b.add_argument("--trials", type=int, help="--sweep: trials (default: the sweep's num_samples)")
    b.add_argument("--concurrent", action="store_true",
                   help="--sweep: also run the sweep with max_concurrent 2 and compare trials per hour")
    b.add_argument("--memory", action="store_true",
                   help="instead: the request log's and ledger's memory over --queries requests")
    b.add_argument("--queries", type=int, help="--memory: requests logged (default 1000000)")
    b.add_argument("--serve", action="store_true",
                   help="instead: HTTP predict throughput (heist serve) with N client processes vs the actor path "
                        "vs the raw forward")
    b.add_argument("--json", help="also write the figures to this JSON file")

    sv = sub.add_parser("serve", help="serve a defended victim as an HTTP prediction API (docs/serving.md)")
    sv.add_argument("config", help="serve YAML, e.g. serve/digits.yaml")
    sv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set http.port=9000 --set defense.name=dcp")
    sk = sub.add_parser("serve-keys", help="issue an API key with an image budget on a running `heist serve`")
    sk.add_argument("url", help="the server's URL, e.g. http://127.0.0.1:8000")
    sk.add_argument("client_id", help="a name for the client (its rows in the ledger)")
    sk.add_argument("budget", type=int, help="images the key may have answered in total")
    sk.add_argument("--kind", default="attacker", help="the client's kind in the ledger (default: %(default)s)")
    sk.add_argument("--state-dir", default="heist-serve/heist-victim",
                    help="the server's state_dir, holding owner_token (default: %(default)s)")
    sk.add_argument("--token-file", help="the owner token file (default: <state-dir>/owner_token)")

    r = sub.add_parser("run", help="run a sweep: Tune + Optuna trials, MLflow runs, the Pareto frontier")
    r.add_argument("config", help="sweep YAML, e.g. sweeps/quickstart.yaml")
    v = sub.add_parser("validate", help="check a sweep YAML; print the resolved config or every error")
    v.add_argument("config", help="sweep YAML")
    s = sub.add_parser("resume", help="continue an interrupted sweep")
    s.add_argument("sweep", help="the sweep directory `heist run` printed, or a sweep name (its latest run)")
    y = sub.add_parser("sync", help="log to MLflow the trials a sweep recorded while its tracking store was down")
    y.add_argument("sweep", help="the sweep directory `heist run` printed, or a sweep name (its latest run)")
    f = sub.add_parser("pareto", help="recompute and print a finished sweep's frontier from MLflow (read-only)")
    f.add_argument("sweep", help="MLflow experiment name (its latest sweep) or parent run id")
    f.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    f.add_argument("--write", action="store_true",
                   help="also log the recomputed frontier on the sweep's parent run (pareto/ artifacts, "
                        "hypervolume, pareto tags); by default the store is only read")
    rp = sub.add_parser("report", help="defenses × attacks from several sweeps of one victim, in one table")
    rp.add_argument("sweeps", nargs="+", help="parent run ids, or experiment names (their latest sweep)")
    rp.add_argument("--metric", default="stolen_accuracy", help="per-attack metric in the cells (default: %(default)s)")
    rp.add_argument("--out", help="also write report.md and report.csv into this directory")
    rp.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here")
    ls = sub.add_parser("list", help="the registered defenses, attacks, hardening recipes, datasets and models")
    ls.add_argument("kind", nargs="?", help="defenses, attacks, hardening, datasets or models (default: all)")
    ls.add_argument("--markdown", action="store_true", help="the full reference as Markdown (docs/reference.md)")
    d = sub.add_parser("describe", help="one defense/attack/recipe/dataset/model: each parameter's default, range, meaning")
    d.add_argument("name")
    return p


def _list(args) -> int:
    from orchestrator import catalog

    print(catalog.markdown() if args.markdown else catalog.list_text(args.kind), end="\n" if not args.markdown else "")
    return 0


def _describe(args) -> int:
    from orchestrator import catalog

    print(catalog.describe_text(args.name))
    return 0


def _serve_keys(args) -> int:
    """`heist serve-keys URL CLIENT_ID BUDGET`: issue a key on a running `heist serve`; prints the key."""
    from pathlib import Path

    from orchestrator.client import HeistError, issue_key

    token_file = Path(args.token_file) if args.token_file else Path(args.state_dir) / "owner_token"
    if not token_file.is_file():
        raise UserError(f"--token-file: no owner token at {str(token_file)!r} (heist serve writes it to "
                        f"<state_dir>/owner_token)")
    try:
        key = issue_key(args.url, token_file.read_text().strip(), args.client_id, args.budget, args.kind)
    except HeistError as e:
        raise UserError(str(e)) from None
    except (OSError, ValueError) as e:
        raise UserError(f"url: cannot reach {args.url!r} ({e})") from None
    print(key)
    return 0


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


def _sync(args) -> int:
    from orchestrator.sweep import sync

    return sync(args.sweep)


def _pareto(args) -> int:
    from orchestrator.sweep_config import resolve_tracking_uri
    from orchestrator.tracking import check_reachable, check_store_exists, find_sweep, print_frontier

    uri = resolve_tracking_uri(args.tracking_uri)
    check_store_exists(uri)
    check_reachable(uri)
    tracker = find_sweep(uri, args.sweep)
    cfg = tracker.sweep_config()
    if args.write:
        print_frontier(cfg, tracker, tracker.report_frontier(cfg))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        print_frontier(cfg, tracker, tracker.frontier(cfg, tmp), written=False)
    return 0


def quiet_local_ray() -> None:
    """For a Ray that Heist starts on this machine (no RAY_ADDRESS), keep Ray's default — token authentication on,
    the token in ~/.ray/auth_token (generated once) — but choose it explicitly, which silences Ray's warning that
    it chose it. RAY_AUTH_MODE set in the environment is respected. Must run before Ray is imported: Ray reads
    the mode once per process."""
    import os

    if "RAY_ADDRESS" not in os.environ:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_local_ray()
    try:
        if args.command == "trial":
            from orchestrator.trial import main as run
        elif args.command == "bench":
            from orchestrator.bench import main as run
        elif args.command == "report":
            from orchestrator.report import main as run
        elif args.command == "serve":
            from orchestrator.serve import main as run
        else:
            run = {"run": _run, "validate": _validate, "resume": _resume, "sync": _sync, "pareto": _pareto,
                   "list": _list, "describe": _describe, "serve-keys": _serve_keys}[args.command]
        return run(args) or 0
    except ConfigError as e:       # one line per error, each with its YAML path
        for error in e.errors:
            print(f"heist {args.command}: error: {error}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"heist {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"heist {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
