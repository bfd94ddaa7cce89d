"""The architecture options of `saescope train`: every architecture's config fields, each
option saying which architectures take it, and the check that one is not given to another."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from saescope.cli.options import field, field_docs, given, parse_type
from saescope.errors import ConfigError
from saescope.runs import SHAPED_BY_DATA
from saescope.saes import ARCHITECTURES

SAE_SHAPE_FIELDS = frozenset({"d_in", "d_out", "apply_b_dec_to_input", "d_sae"})
"""Set from the data (d_sae has its own option, --d-sae, taken with the others)."""


def arch_fields() -> dict[str, list[str]]:
    """Each architecture-specific option and the architectures that take it."""
    out: dict[str, list[str]] = {}
    for name, cls in ARCHITECTURES.items():
        for f in dataclasses.fields(cls.config_cls):
            if f.name not in SAE_SHAPE_FIELDS:
                out.setdefault(f.name, []).append(name)
    return out


def _per_arch(archs: list[str], texts: list[str]) -> str:
    """One text when the architectures agree, else each with its architecture's name."""
    if len(set(texts)) == 1:
        return texts[0]
    return "; ".join(f"{a}: {t.rstrip('.')}" for a, t in zip(archs, texts, strict=True)) + "."


def add_arch_args(parser: argparse._ActionsContainer) -> None:
    """The options of every architecture, each saying which architectures take it."""
    for name, archs in arch_fields().items():
        classes = [ARCHITECTURES[a].config_cls for a in archs]
        types = {str(field(c, name).type) for c in classes}
        help_ = _per_arch(archs, [field_docs(c).get(name, "") for c in classes])
        defaults = SHAPED_BY_DATA.get(name) or _per_arch(
            archs, [str(field(c, name).default) for c in classes]
        )
        help_ += f" [{', '.join(archs)}] (default: {defaults})"
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            default=None,
            type=float if any("float" in t for t in types) else parse_type(types.pop()),
            help=help_.replace("%", "%%"),
        )


def arch_given(ns: argparse.Namespace, arch: str) -> dict[str, Any]:
    """The given options of one architecture and --d-sae; an option of another is an error,
    and a whole number where the field is an int becomes an int."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    cls = ARCHITECTURES[arch].config_cls
    allowed = {f.name for f in dataclasses.fields(cls)}
    for name, archs in arch_fields().items():
        if getattr(ns, name, None) is not None and name not in allowed:
            raise ConfigError(
                f"--{name.replace('_', '-')} applies to {', '.join(archs)}, not {arch}"
            )
    out = given(ns, cls, SAE_SHAPE_FIELDS - {"d_sae"})
    for name, value in out.items():
        if isinstance(value, float) and str(field(cls, name).type).startswith("int"):
            if not value.is_integer():
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} must be a whole number for {arch}, got {value}")
            out[name] = int(value)
    return out


def all_given(ns: argparse.Namespace) -> dict[str, Any]:
    """Every architecture option given, whichever architectures take it (for a run to resume,
    which knows its own); whole numbers as ints."""
    names = [*arch_fields(), "d_sae"]
    out = {n: getattr(ns, n) for n in names if getattr(ns, n, None) is not None}
    return {n: int(v) if isinstance(v, float) and v.is_integer() else v for n, v in out.items()}
