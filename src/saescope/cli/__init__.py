"""The `saescope` command line: one short module per command, each with `add_parser(sub)` and
`run(ns) -> int`. A command parses, calls the library, prints; errors a user can fix are
printed as one line (exit status 2)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from saescope import precision
from saescope.cli import (
    convert,
    demo,
    eval,
    explore,
    export,
    features,
    harvest,
    hooks,
    index,
    runs,
    steer,
    sweep,
    train,
)
from saescope.errors import SaescopeError

COMMANDS = (
    train,
    eval,
    harvest,
    hooks,
    runs,
    steer,
    features,
    index,
    demo,
    explore,
    export,
    convert,
    sweep,
)

PRECISION_COMMANDS = ("harvest", "eval", "steer", "index")  # train's is a TrainConfig field
PRECISION_HELP = "fp32, bf16 or auto (default: bf16 where clearly faster; docs/PRECISION.md)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saescope", description="Sparse autoencoders: train, evaluate, list runs, steer."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        parser = command.add_parser(sub)
        parser.set_defaults(handler=command.run)
        if command.__name__.rsplit(".", 1)[-1] in PRECISION_COMMANDS:
            parser.add_argument("--precision", default="auto", help=PRECISION_HELP)
    return p


def _warn(message: Warning | str, *_: Any, **__: Any) -> None:
    """A warning as one line, as errors are."""
    print(f"saescope: warning: {message}", file=sys.stderr)


def _precision(ns: argparse.Namespace) -> contextlib.AbstractContextManager[None]:
    """The model precision of harvest, eval, steer and index (train settles its own)."""
    if ns.command not in PRECISION_COMMANDS:
        return contextlib.nullcontext()
    return precision.for_command(ns.precision, getattr(ns, "device", None) or "cpu")


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():  # restores showwarning after
            warnings.showwarning = _warn
            with _precision(ns):
                return ns.handler(ns)
    except SaescopeError as e:
        print(f"saescope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C; SIGTERM too while training (training.Interrupted)
        again = "interrupted; run it again"
        if ns.command in ("train", "sweep"):
            again = (train if ns.command == "train" else sweep).interrupted(ns, e)
        print(f"saescope: {again}", file=sys.stderr)
        return getattr(e, "exit_status", 130)
    except PermissionError as e:  # a read-only folder: a peer SAE in a shared cache, say
        where = e.filename or "a file"
        print(
            f"saescope: error: cannot write {where}: permission denied; copy the folder "
            "somewhere writable (or convert it there: saescope convert SRC --out DIR) and "
            "run on the copy",
            file=sys.stderr,
        )
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


__all__ = ["build_parser", "main"]
