"""The figures of docs/watermarks.md: trials of a watermark trial YAML over victim variants and seeds.

    python scripts/watermark_figures.py run --dataset fashion_mnist --seeds 0 1 2 --variants adv ood at none --out runs.jsonl
    python scripts/watermark_figures.py table runs.jsonl            # the docs' three tables
    python scripts/watermark_figures.py table runs.jsonl --all      # every metric, per variant

`run` starts one local Ray and calls orchestrator.trial.run_trial per (variant, seed) — the same path as
`heist trial YAML --set victim.seed=S ...` — appending each trial's metrics as a JSON line; `--dataset D` runs
sweeps/trials/D_watermark.yaml (or give the YAML). `table` prints mean ± sd over seeds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {   # `heist trial` --set overrides that make each victim variant from the YAML's AT + adversarial WM
    "adv": [],
    "ood": ["victim.hardening.params.watermark.kind=ood"],
    "at": ["victim.hardening.params.watermark.kind=none"],
    "none": ["victim.hardening={name: none}"],
}
VICTIM_NAMES = {"none": "undefended", "at": "plain AT", "adv": "AT + adversarial WM", "ood": "AT + OOD WM"}
SUSPECTS = {"greybox": "grey-box Knockoff (LeNet-5)", "blackbox": "black-box Knockoff (MLP)",
            "finetune": "white-box: fine-tuned"}


def config_path(args) -> Path:
    if args.config:
        return Path(args.config)
    path = ROOT / "sweeps" / "trials" / f"{args.dataset}_watermark.yaml"
    if not path.exists():
        raise SystemExit(f"--dataset: no trial YAML {path.relative_to(ROOT)} for {args.dataset!r}")
    return path


def run(args) -> None:
    import ray

    from orchestrator.config import trial_config
    from orchestrator.trial import apply_override, run_trial

    path = config_path(args)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for variant in args.variants:
        for seed in args.seeds:
            data = yaml.safe_load(path.read_text())
            sets = VARIANTS[variant] + [f"victim.seed={seed}"] + [f"attacks.{i}.seed={seed}"
                                                                  for i in range(len(data["attacks"]))]
            for assignment in sets + (args.set or []):
                apply_override(data, assignment)
            result = run_trial(trial_config(data))
            line = {"config": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
                    "variant": variant, "seed": seed, "set": sets + (args.set or []), "metrics": result.metrics,
                    "seconds": result.info["seconds"]}
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
            print(variant, seed, f"{result.info['seconds']:.0f} s", flush=True)
    ray.shutdown()


def cell(rows: list[dict], variant: str, name: str) -> str:
    """mean ± sample sd of one metric over the variant's seeds; — when no run has it."""
    vals = [r["metrics"][name] for r in rows if r["variant"] == variant and name in r["metrics"]]
    if not vals:
        return "—"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f}"


def tables(rows: list[dict]) -> str:
    """The victims, suspects and null-model tables of docs/watermarks.md."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    out = [f"Seeds {seeds} (victim, attack and null-model seeds), mean ± sd over seeds.", "",
           "| victim | clean acc. | robust acc. (PGD-20 at ownership.robust_epsilon) | wm acc. on victim |",
           "|---|---|---|---|"]
    for v in [v for v in VICTIM_NAMES if v in variants]:
        out.append(f"| {VICTIM_NAMES[v]} | {cell(rows, v, 'victim_accuracy')} | {cell(rows, v, 'robust_accuracy')} "
                   f"| {cell(rows, v, 'wm_accuracy_victim')} |")
    marked = [v for v in ("adv", "ood") if v in variants]
    if not marked:
        return "\n".join(out)
    prunes = sorted({k.split("/")[1] for r in rows for k in r["metrics"] if k.startswith("wm_accuracy/prune_")},
                    key=lambda s: float(s.split("_")[1]))
    suspects = {"victim": "victim", **SUSPECTS} | {p: f"white-box: pruned {float(p.split('_')[1]):.0%}"
                                                   for p in prunes}
    head = " | ".join(f"{VICTIM_NAMES[v].split(' + ')[1]}: wm acc. | verified (τ) | verified (binomial)"
                      for v in marked)
    out += ["", f"| suspect | {head} | clean acc. ({' / '.join(VICTIM_NAMES[v].split(' + ')[1] for v in marked)}) |",
            "|---|" + "---|" * (3 * len(marked) + 1)]
    for key, label in suspects.items():
        clean = {"victim": "victim_accuracy", "greybox": "stolen_accuracy/greybox",
                 "blackbox": "stolen_accuracy/blackbox"}.get(key, f"removal_accuracy/{key}")
        if key == "victim":
            marks = [f"{cell(rows, v, 'wm_accuracy_victim')} | — | —" for v in marked]
        else:
            marks = [f"{cell(rows, v, f'wm_accuracy/{key}')} | {cell(rows, v, f'wm_verified/{key}')} | "
                     f"{cell(rows, v, f'wm_verified_binomial/{key}')}" for v in marked]
        out.append(f"| {label} | " + " | ".join(marks) + " | " + " / ".join(cell(rows, v, clean) for v in marked) + " |")
    out += ["", "| null models (independent clean models) | " + " | ".join(VICTIM_NAMES[v] for v in marked) + " |",
            "|---|" + "---|" * len(marked)]
    for name, label in (("wm_accuracy_null", "mean wm acc."), ("wm_threshold", "τ = max + margin"),
                        ("wm_fpr", "false-positive rate, τ test (leave-one-out)"),
                        ("wm_fpr_binomial", "false-positive rate, binomial test"),
                        ("wm_verification_rate", "verification rate over the stolen and removal copies")):
        out.append(f"| {label} | " + " | ".join(cell(rows, v, name) for v in marked) + " |")
    return "\n".join(out)


def table(args) -> None:
    rows = [json.loads(line) for line in Path(args.runs).read_text().splitlines() if line.strip()]
    if not args.all:
        print(tables(rows))
        return
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    names = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    print("| metric | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    for name in names:
        print(f"| {name} | " + " | ".join(cell(rows, v, name) for v in variants) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="watermark_figures")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("config", nargs="?", help="trial YAML (default: sweeps/trials/<dataset>_watermark.yaml)")
    r.add_argument("--dataset", default="digits", help="picks sweeps/trials/<dataset>_watermark.yaml")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    r.add_argument("--set", action="append", help="extra KEY=VALUE override, as heist trial --set")
    r.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("runs")
    t.add_argument("--all", action="store_true", help="every metric, one row each")
    args = p.parse_args(argv)
    run(args) if args.cmd == "run" else table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
