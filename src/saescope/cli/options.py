"""Options from config dataclasses: one --option per field, its help text the field's
docstring, its default left unset so only what the user gives reaches the config."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import textwrap
from functools import cache
from typing import Any

from saescope.models import MODELS

MODEL_HELP = f"an embedded model ({', '.join(MODELS)}) or a local Hugging Face model folder"
TEXT_HELP = 'text files, folders or .jsonl ("text" per line); default: the installed corpus'


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass and its bases (the string under each field)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


NONE = type("GivenNone", (), {"__repr__": lambda self: "none"})()
"""An optional field given as `none` on the command line (unlike one not given)."""


def parse_type(annotation: str) -> Any:
    """The converter for a field annotation such as 'int | None' ('none' gives None there)."""
    base = annotation.replace("| None", "").strip()
    convert = {"int": int, "float": float, "str": str, "bool": _bool}.get(base, str)
    if "| None" not in annotation:
        return convert

    def optional(s: str) -> Any:
        return NONE if s.lower() == "none" else convert(s)

    optional.__name__ = convert.__name__  # argparse names the type in its errors
    return optional


def field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def add_config_args(
    parser: argparse._ActionsContainer, cls: type, skip: frozenset[str] = frozenset()
) -> None:
    """One --option per dataclass field; defaults stay None so only given values are used."""
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=parse_type(str(f.type)),
            default=None,
            help=(docs.get(f.name, "") + f" (default: {default})").replace("%", "%%"),
        )


def given(ns: argparse.Namespace, cls: type, skip: frozenset[str] = frozenset()) -> dict:
    """The fields of `cls` the user gave on the command line."""
    return {
        f.name: None if getattr(ns, f.name) is NONE else getattr(ns, f.name)
        for f in dataclasses.fields(cls)
        if f.name not in skip and getattr(ns, f.name, None) is not None
    }


HOOK_HELP = (
    "hook point: PATH (output) or PATH:in (input); train takes several: a,b,c (one SAE each)"
)


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("real model options (train on the fly, or from a cache with --data)")
    g.add_argument("--model", default=None, help=MODEL_HELP + "; harvests on the fly")
    g.add_argument("--hook", default=None, help=HOOK_HELP)
    g.add_argument("--target", default=None, help="a transcoder's target hook (y); default: y = x")
    g.add_argument("--text", nargs="+", default=None, help=TEXT_HELP)
    g.add_argument("--context", type=int, help="tokens per context (default: 128)")
