"""The defaults docs/sweeps.md documents are the defaults a sweep resolves to (one source of truth)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from orchestrator.sweep_config import as_data, from_dict

DOC = Path(__file__).parents[2] / "docs" / "sweeps.md"


def documented_defaults() -> dict[str, object]:
    """`block.key` -> the default written as one backquoted YAML value in a table of docs/sweeps.md."""
    out, block = {}, None
    for line in DOC.read_text().splitlines():
        if line.startswith("## Top-level keys"):
            block = ""
        elif m := re.match(r"### `([a-z_.\[\]]+)`$", line):
            block = m.group(1)
        elif line.startswith("#"):
            block = None
        elif block is not None and (m := re.match(r"\| `(\w+)` \| `([^`]+)` \|", line)):
            out[f"{block}.{m.group(1)}" if block else m.group(1)] = yaml.safe_load(m.group(2))
    return out


def resolved(path: str, data: dict):
    node = data
    for part in path.split("."):
        node = node[part[:-2]][0] if part.endswith("[]") else node[part]
    return node


def test_the_documented_defaults_are_the_resolved_ones():
    documented = documented_defaults()
    data = as_data(from_dict({"defense": {"name": "dcp", "params": {"beta": [0.5, 1.0]}}}, "x"))
    assert len(documented) >= 40          # every block's table was read
    wrong = {p: (v, resolved(p, data)) for p, v in documented.items() if resolved(p, data) != v}
    assert not wrong, f"docs/sweeps.md documents (documented, resolved): {wrong}"


def test_a_partial_block_resolves_to_the_documented_siblings():
    documented = documented_defaults()
    data = as_data(from_dict({"defense": {"name": "dcp", "params": {"beta": [0.5, 1.0]}},
                              "victim": {"train": {"epochs": 3}}, "attacks": [{"train": {"epochs": 4}}]}, "x"))
    assert data["victim"]["train"] == {k.split(".")[-1]: v for k, v in documented.items()
                                       if k.startswith("victim.train.")} | {"epochs": 3}
    assert data["attacks"][0]["train"]["lr"] == documented["attacks[].train.lr"] == 0.001
