"""One Markdown table from several `heist trial --json` files: clean accuracy, and per attack the stolen accuracy
and fidelity as mean ± sd over the trial's attack seeds (its `repeats`).

    python scripts/trials_table.py "InI=docs/data/ini/fmnist_ini.json" "undefended=docs/data/ini/fmnist_none.json"
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cell(metrics: dict, name: str, attack: str) -> str:
    mean, sd = metrics.get(f"{name}/{attack}"), metrics.get(f"{name}_std/{attack}")
    return "—" if mean is None else f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def table(labelled: list[tuple[str, dict]]) -> str:
    attacks = list(dict.fromkeys(k.split("/", 1)[1] for _, m in labelled for k in m if k.startswith("stolen_accuracy/")))
    head = ["victim", "clean acc."] + [f"{a}: stolen / fidelity" for a in attacks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in labelled:
        cells = [label, f"{m['victim_accuracy']:.4f}"]
        cells += [f"{cell(m, 'stolen_accuracy', a)} / {cell(m, 'fidelity', a)}" for a in attacks]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    labelled = []
    for arg in argv:
        label, _, path = arg.rpartition("=")
        labelled.append((label or Path(path).stem, json.loads(Path(path).read_text())["metrics"]))
    print(table(labelled))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
