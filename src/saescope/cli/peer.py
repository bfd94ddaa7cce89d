"""`--model` and `--hook`: the model and hook point of a peer library's SAE folder (SAELens),
for every command that reads an SAE; `--device` where eval, steer and index run."""

from __future__ import annotations

import argparse
from typing import Any

from saescope.runs import Run

MODEL_HELP = (
    "for a peer library's SAE folder (SAELens): the model it belongs to, glassllm, minilm, "
    "smollm2 or a local Hugging Face folder (default: the one its metadata names; needed when "
    "that is not one of saescope's). A saescope run keeps the model it records"
)
HOOK_HELP = (
    "for a peer library's SAE folder: the hook point it reads (saescope hooks MODEL lists "
    "them; default: the one its metadata names). A saescope run keeps its own"
)

DEVICE_HELP = "where the SAEs and the model run: cpu (default), cuda or cuda:N"


def add_args(p: argparse.ArgumentParser, hook: bool = True, device: bool = False) -> None:
    """Add --model (and --hook, unless the command has its own; --device if asked) to a
    command's parser."""
    p.add_argument("--model", default=None, help=MODEL_HELP)
    if hook:
        p.add_argument("--hook", default=None, help=HOOK_HELP)
    if device:
        p.add_argument("--device", default="cpu", help=DEVICE_HELP)


def open_run(ns: argparse.Namespace, path: str | None = None, **kw: Any) -> Run:
    """`Run.open` of the command's RUN (or `path`) with --model, --hook and --device."""
    where = getattr(ns, "device", "cpu")
    return Run.open(path or ns.run, model=ns.model, hook=ns.hook, device=where, **kw)
