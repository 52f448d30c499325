"""Tables and plots of docs/query_attacks.md from `heist trial ... --json` outputs (one per defense).

    python scripts/query_attack_tables.py docs/figures/query_attacks_fashion_mnist none=docs/data/fqa_none.json \
        dcp=docs/data/fqa_dcp.json rs=docs/data/fqa_rs.json

Writes PREFIX_<name>.png per defense and prints a markdown table per defense: stolen accuracy mean ± sample
sd over the repeats at each checkpoint, fidelity in brackets.
"""
import json
import sys

from orchestrator.curves import plot, summarize


def main(prefix: str, runs: list[str]) -> None:
    for spec in runs:
        name, path = spec.split("=", 1)
        data = json.load(open(path))
        summary = summarize(data["curves"])
        plot(summary, f"{prefix}_{name}.png")
        m = data["metrics"]
        checkpoints = sorted(summary["checkpoint"].unique())
        print(f"\n#### {name}: defended_accuracy {m['defended_accuracy']:.4f}, victim {m['victim_accuracy']:.4f}, "
              f"perturbation L1 {m['perturbation_l1']:.3f}\n")
        print("| attack | " + " | ".join(f"{c:,} queries" for c in checkpoints) + " |")
        print("|---|" + "---|" * len(checkpoints))
        for attack, g in summary.groupby("attack"):
            g = g.set_index("checkpoint")
            cells = [f"{g.stolen_accuracy[c]:.3f} ± {g.stolen_accuracy_std[c]:.3f} ({g.fidelity[c]:.3f} ± "
                     f"{g.fidelity_std[c]:.3f})" if c in g.index else "–" for c in checkpoints]
            print(f"| {attack} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
