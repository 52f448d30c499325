"""The figures of docs/watermarks.md: trials of a watermark trial YAML over victim variants and seeds.

    python scripts/watermark_figures.py run YAML --seeds 0 1 2 --variants adv ood at none --out runs.jsonl
    python scripts/watermark_figures.py table runs.jsonl

`run` starts one local Ray and calls orchestrator.trial.run_trial per (variant, seed) — the same path as
`heist trial YAML --set victim.seed=S ...` — appending each trial's metrics as a JSON line; `table` prints
mean ± sd over seeds per variant.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

VARIANTS = {   # `heist trial` --set overrides that make each victim variant from the YAML's AT + adversarial WM
    "adv": [],
    "ood": ["victim.hardening.params.watermark.kind=ood"],
    "at": ["victim.hardening.params.watermark.kind=none"],
    "none": ["victim.hardening={name: none}"],
}


def run(args) -> None:
    import ray

    from orchestrator.config import trial_config
    from orchestrator.trial import apply_override, run_trial

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for variant in args.variants:
        for seed in args.seeds:
            data = yaml.safe_load(Path(args.config).read_text())
            sets = VARIANTS[variant] + [f"victim.seed={seed}"] + [f"attacks.{i}.seed={seed}"
                                                                  for i in range(len(data["attacks"]))]
            for assignment in sets + (args.set or []):
                apply_override(data, assignment)
            result = run_trial(trial_config(data))
            line = {"variant": variant, "seed": seed, "set": sets, "metrics": result.metrics,
                    "seconds": result.info["seconds"]}
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
            print(variant, seed, f"{result.info['seconds']:.0f} s", flush=True)
    ray.shutdown()


def table(args) -> None:
    rows = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line.strip()]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    names = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    print("| metric | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for name in names:
        cells = []
        for v in variants:
            vals = [r["metrics"][name] for r in rows if r["variant"] == v and name in r["metrics"]]
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f} "
                         f"(n={len(vals)})" if vals else "—")
        print(f"| {name} | " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="watermark_figures")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("config")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    r.add_argument("--set", action="append", help="extra KEY=VALUE override, as heist trial --set")
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("runs")
    args = p.parse_args(argv)
    run(args) if args.cmd == "run" else table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
