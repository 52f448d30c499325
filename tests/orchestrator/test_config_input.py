"""Every input a user writes gets one line naming the file, line and column or the field, from every command
(`heist trial`, `validate`, `run` read YAML through one loader); and a property-based fuzz of that loader:
any document is a configuration error or a valid config, never another exception."""
from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import UserError, main
from orchestrator.config import trial_config
from orchestrator.sweep_config import dump, from_dict, plan
from orchestrator.trial import trial_dict
from workloads.config import ConfigError, parse_yaml

SWEEP = """\
victim: {dataset: digits, train: {epochs: 2}}
defense:
  name: dcp
  params: {beta: {uniform: [0.3, 1.0]}}
attacks: [{name: knockoff, budget: 100}]
"""


def one_line(capsys, argv: list[str]) -> str:
    """Run the command; it must fail with exit 2 and exactly one line on stderr (no traceback): that line."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err + captured.out, captured.err
    return captured.err.rstrip("\n")


@pytest.fixture
def write(tmp_path):
    def write(text: str | bytes, name: str = "sweep.yaml"):
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return path

    return write


@pytest.mark.parametrize("command", ["trial", "validate", "run"])
def test_every_command_reads_yaml_the_same_way(command, write, capsys):
    path = write(SWEEP.replace("  name: dcp\n", "  name: dcp\n  name: none\n"))
    assert one_line(capsys, [command, str(path)]) == (
        f"heist {command}: error: {path}:4:3: invalid YAML: duplicate key 'name' (first at line 3, column 3)")
    path = write(SWEEP + "search: {num_samples: 4\n")
    assert one_line(capsys, [command, str(path)]) == (
        f"heist {command}: error: {path}:7:1: invalid YAML: expected ',' or '}}', but got '<stream end>' "
        f"(while parsing a flow mapping at line 6, column 9)")
    path = write(SWEEP.encode() + "name: caf\u00e9\n".encode("latin-1"))
    assert one_line(capsys, [command, str(path)]) == (
        f"heist {command}: error: {path}:6:10: not UTF-8 text (byte 0xe9); save the file as UTF-8")


def test_syntax_errors_keep_their_line_and_column(write, capsys):
    path = write("victim:\n  dataset: digits\n   arch: lenet5\n")
    assert one_line(capsys, ["validate", str(path)]) == (
        f"heist validate: error: {path}:3:8: invalid YAML: mapping values are not allowed here")
    path = write("victim: {dataset: digits}\nname: \"a\x07b\"\n")
    assert one_line(capsys, ["validate", str(path)]).startswith(
        f"heist validate: error: {path}: invalid YAML: unacceptable character #x0007")


def test_numbers_too_large_for_their_type_name_the_field(write, capsys):
    huge = 10**30
    cases = {"attacks[0].budget": (SWEEP.replace("budget: 100", f"budget: {huge}"),
                                   f"{huge} is too large for an integer (at most 9223372036854775807)"),
             "search.seed": (SWEEP + "search: {seed: 4294967296}\n",
                             "expected a value in [0, 4294967295], got 4294967296"),
             "victim.train.lr": (SWEEP.replace("epochs: 2", "epochs: 2, lr: 1e400"), "expected a number, got inf"),
             "defense.params.beta.uniform": (SWEEP.replace("[0.3, 1.0]", f"[0.3, {huge * 10**300}]"),
                                             "expected [low, high], got [0.3, ")}
    for field, (text, message) in cases.items():
        line = one_line(capsys, ["validate", str(write(text))])
        assert line.startswith(f"heist validate: error: {field}: {message}"), line


def test_yaml_1_2_exponents_are_numbers():
    assert parse_yaml("lr: 1e-3\nbig: 2E+5\nname: e5\n", "x") == {"lr": 0.001, "big": 200000.0, "name": "e5"}
    assert from_dict(yaml.safe_load(SWEEP) | {"victim": {"train": {"lr": 1e-3}}}).victim.train.lr == 0.001
    assert parse_yaml("base: &b {a: 1}\nderived: {<<: *b, a: 2}\n", "x")["derived"] == {"a": 2}   # merge keys


def test_non_mapping_entries_where_a_mapping_belongs(write, capsys):
    for entries, message in (("[3]", "search.points_to_evaluate[0]: expected a mapping, got 3"),
                             ("[{params: 3}]", "search.points_to_evaluate[0].params: expected a mapping of "
                                               "hyperparameter values, got 3")):
        path = write(SWEEP + f"search: {{points_to_evaluate: {entries}}}\n")
        assert one_line(capsys, ["validate", str(path)]) == f"heist validate: error: {message}"
    path = write(SWEEP.replace("budget: 100", "budget: 100, params: [1]"))
    assert one_line(capsys, ["validate", str(path)]) == (
        "heist validate: error: attacks[0].params: expected a mapping, got [1]")


def test_more_workers_than_budget_and_unknown_surrogates_fail_validation(write, capsys):
    path = write(SWEEP.replace("budget: 100", "budget: 4, workers: 8"))
    assert one_line(capsys, ["validate", str(path)]) == (
        "heist validate: error: attacks[0].workers: 8 workers for a budget of 4 images leaves some with nothing "
        "to send; at most 4")
    path = write(SWEEP.replace("budget: 100", "budget: 100, surrogate: {kind: dataset, name: cifar11}"))
    assert one_line(capsys, ["validate", str(path)]) == (
        "heist validate: error: attacks[0].surrogate.name: unknown value 'cifar11' (did you mean 'cifar10'?); "
        "expected one of ['cifar10', 'cifar100', 'digits', 'fashion_mnist', 'kmnist', 'mnist', 'svhn']")


# ------------------------------------------------------------------------------------------- the fuzz
BASE = yaml.safe_load(SWEEP + "search: {num_samples: 4, points_to_evaluate: [{params: {beta: 0.5}}]}\n"
                              "objectives: [{metric: defended_accuracy, mode: max}]\n")
KEYS = sorted({"victim", "defense", "defenses", "attacks", "search", "objectives", "name", "params", "beta",
               "budget", "workers", "surrogate", "kind", "points_to_evaluate", "uniform", "int", "choice",
               "metric", "mode", "seed", "storage", "tracking", "uri", "train", "epochs", "reference_point"})


def paths(node, prefix=()):
    """Every place in a document: mapping keys and list items, nested."""
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        yield from paths(child, (*prefix, key))


scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
           | st.sampled_from(KEYS + ["dcp", "knockoff", "digits", "grid", "max", "1e400", "~", "", "sqlite://"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=4), inner, max_size=3),
                      max_leaves=10)


def check(text: str | bytes) -> None:
    """What `heist validate` and `heist trial` do with a document: a ConfigError/UserError or a valid config."""
    try:
        data = parse_yaml(text, "fuzz.yaml") or {}
        cfg, _ = plan(from_dict(data), {"CPU": 2.0, "GPU": 0.0})
        dump(cfg)
    except (ConfigError, UserError):
        pass
    try:
        trial_config(trial_dict(parse_yaml(text, "fuzz.yaml") or {}))
    except (ConfigError, UserError):
        pass


FUZZ = settings(max_examples=300, deadline=5000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.data())
def test_fuzz_any_value_anywhere_in_a_valid_sweep(data):
    document = copy.deepcopy(BASE)
    where = data.draw(st.sampled_from(list(paths(document))[1:]))
    node = document
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = data.draw(values)
    check(yaml.safe_dump(document))


@FUZZ
@given(st.lists(st.sampled_from(list("{}[]:,-#&*!|>'\"%@` \n\t") + ["name", "defense", "search", "1e9", "a", "0",
                                                                        "<<", "!!set", "&x", "*x", "\ufeff"]),
                max_size=40).map("".join) | st.binary(max_size=40))
def test_fuzz_any_text(text):
    check(text)
