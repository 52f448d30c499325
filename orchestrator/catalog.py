"""A reference for every knob, generated from the registries: `heist list [KIND]`, `heist describe NAME`, and
docs/reference.md (`heist list --markdown > docs/reference.md`; a test fails when the file is out of step).

A registered defense, attack or hardening recipe shows its module's first docstring paragraph (the paper)
and each parameter of its Params dataclass with type, default, valid range and meaning. The meaning is the
field's `help` metadata (declare fields with `workloads.config.knob(default, help, valid)`), else a
`name: meaning` line of the Params docstring.
"""
from __future__ import annotations

import dataclasses
import sys
import typing

KINDS = ("defenses", "attacks", "hardening", "datasets", "models")


@dataclasses.dataclass(frozen=True)
class Knob:
    name: str
    type: str
    default: str
    valid: str
    help: str


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    summary: str
    knobs: list[Knob]
    note: str = ""


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _type_name(tp) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    return {type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp).replace("typing.", "")))


def _docstring_help(cls) -> dict[str, str]:
    """`name: meaning` lines of a Params docstring."""
    out = {}
    for line in (cls.__doc__ or "").splitlines():
        name, sep, text = line.strip().partition(":")
        if sep and name.isidentifier():
            out[name] = text.strip()
    return out


def _metadata(params_cls, name: str) -> dict:
    """A field's knob metadata, from the nearest class declaring it with some (a preset such as MAZE's
    redeclares a parent's field with only a new default)."""
    for cls in params_cls.__mro__:
        field = getattr(cls, "__dataclass_fields__", {}).get(name)
        if field is not None and field.metadata:
            return dict(field.metadata)
    return {}


def knobs(params_cls) -> list[Knob]:
    hints, from_doc = typing.get_type_hints(params_cls), _docstring_help(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        meta = _metadata(params_cls, f.name)
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        out.append(Knob(f.name, _type_name(hints[f.name]), default, meta.get("valid", ""),
                        meta.get("help") or from_doc.get(f.name, "")))
    return out


def _module_summary(fn) -> str:
    return _first_paragraph(sys.modules[fn.__module__].__doc__)


def entries(kind: str) -> list[Entry]:
    """Every registered name of `kind`, sorted, with its summary and parameters."""
    if kind == "defenses":
        from workloads.defenses import REGISTRY, ensure_loaded

        ensure_loaded()
        return [Entry(kind, n, _module_summary(build), knobs(params)) for n, (params, build) in sorted(REGISTRY.items())]
    if kind == "attacks":
        from workloads.attacks import REGISTRY, ensure_loaded

        ensure_loaded()
        return [Entry(kind, n, _module_summary(spec.steal), knobs(spec.params),
                      f"labels: {spec.labels} by default (the paper's)") for n, spec in sorted(REGISTRY.items())]
    if kind == "hardening":
        from workloads.hardening import REGISTRY, ensure_loaded

        ensure_loaded()
        return [Entry(kind, n, _module_summary(train), knobs(params)) for n, (params, train) in sorted(REGISTRY.items())]
    if kind == "datasets":
        from workloads.data import LOADERS

        return [Entry(kind, n, _first_paragraph(getattr(loader, "__doc__", None)), []) for n, loader in sorted(LOADERS.items())]
    if kind == "models":
        from workloads.models import MODELS

        return [Entry(kind, n, _first_paragraph(cls.__doc__), []) for n, cls in sorted(MODELS.items())]
    raise ValueError(kind)


def _check_kind(kind: str) -> None:
    from workloads.config import check_choice

    check_choice("kind", kind, KINDS)


def list_text(kind: str | None = None) -> str:
    """`heist list [KIND]`: one line per name."""
    lines = []
    for k in ([kind] if kind else KINDS):
        _check_kind(k)
        lines.append(f"{k}:")
        for e in entries(k):
            about = ", ".join(f"{p.name}={p.default}" for p in e.knobs) or e.summary
            lines.append(f"  {e.name:<24} {about if len(about) <= 90 else about[:87] + '...'}")
    return "\n".join(lines)


def find(name: str) -> list[Entry]:
    return [e for kind in KINDS for e in entries(kind) if e.name == name]


def describe_text(name: str) -> str:
    """`heist describe NAME`: every registry entry of that name, with each parameter's default, range and meaning."""
    from orchestrator.errors import UserError
    from workloads.config import did_you_mean

    found = find(name)
    if not found:
        names = sorted({e.name for kind in KINDS for e in entries(kind)})
        raise UserError(f"no defense, attack, hardening recipe, dataset or model named {name!r}"
                        f"{did_you_mean(name, names)}; `heist list` shows them all")
    blocks = []
    for e in found:
        lines = [f"{e.name} ({e.kind[:-1] if e.kind != 'hardening' else 'hardening recipe'})"]
        if e.summary:
            lines.append(f"  {e.summary}")
        if e.note:
            lines.append(f"  {e.note}")
        if e.knobs:
            lines.append("  parameters:")
            for p in e.knobs:
                valid = f", {p.valid}" if p.valid else ""
                lines.append(f"    {p.name}: {p.type} = {p.default}{valid}" + (f" — {p.help}" if p.help else ""))
        elif e.kind in ("defenses", "attacks", "hardening"):
            lines.append("  no parameters")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown() -> str:
    """docs/reference.md: every registry, every parameter."""
    out = ["# Reference: every defense, attack, hardening recipe, dataset and model", "",
           "Generated from the registries by `heist list --markdown > docs/reference.md`; do not edit by hand "
           "(`tests/orchestrator/test_catalog.py` fails when this file is out of step). `heist describe NAME` "
           "prints one entry. How these go into a sweep YAML: [sweeps.md](sweeps.md).", ""]
    where = {"defenses": "`defense: {name, params}` (or `defenses:`)", "attacks": "`attacks[]: {name, params}`",
             "hardening": "`victim.hardening: {name, params}`", "datasets": "`victim.dataset`",
             "models": "`victim.arch`, `attacks[].substitute_arch`"}
    for kind in KINDS:
        out += [f"## {kind.capitalize()}", "", f"In a sweep YAML: {where[kind]}.", ""]
        if kind in ("datasets", "models"):
            out += ["| name | what it is |", "|---|---|"]
            out += [f"| `{e.name}` | {_cell(e.summary)} |" for e in entries(kind)]
            out.append("")
            continue
        for e in entries(kind):
            out += [f"### `{e.name}`", ""]
            if e.summary:
                out += [e.summary, ""]
            if e.note:
                out += [e.note[0].upper() + e.note[1:] + ".", ""]
            if e.knobs:
                out += ["| parameter | type | default | valid | meaning |", "|---|---|---|---|---|"]
                out += [f"| `{p.name}` | {_cell(p.type)} | `{p.default}` | {_cell(p.valid)} | {_cell(p.help)} |"
                        for p in e.knobs]
            else:
                out.append("No parameters.")
            out.append("")
    return "\n".join(out)
