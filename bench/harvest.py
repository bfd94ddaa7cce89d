"""Harvest speed on a real model: a bare forward pass, a harvest with early exit and the same
harvest run to the end, side by side in one run; writes bench/HARVEST.md.

    make bench-harvest              # or: .venv/bin/python bench/harvest.py [--tokens N]

The text is Python's standard-library docstrings (on every machine, nothing downloaded),
tokenised by the model's tokenizer and packed into whole contexts, run in batches without
gradients. In each of --rounds rounds every batch goes through the three modes in turn (the
order rotating), so bursts of other work on the machine hit all modes alike; a mode's time is
the sum over batches of each batch's best round (every round's total is listed too).

One torch thread by default (--threads): on a shared 2-core machine a two-thread pass stalls
whenever other work takes a core (its rounds ran 0.7 to 4.3 s here), while one thread keeps
its rounds within a few percent; the ratios are what this bench is for.

- forward: `model(ids)`, no hooks.
- harvest, early exit: `saescope.models.harvest.harvest` on the hook points; the pass stops
  once the last of them has fired, so the layers above never run.
- harvest, no early exit: the same with `early_exit=False`: every layer runs.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import platform
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from machine import cpu_name  # bench/machine.py: this file runs as a script
from torch import Tensor

from saescope.models import load_model
from saescope.models.harvest import harvest, pack

HERE = Path(__file__).resolve().parent
STDLIB = (
    "argparse collections functools itertools json pathlib re string textwrap typing "
    "contextlib dataclasses datetime decimal fractions heapq logging os shutil statistics"
).split()
MODES = ("forward", "harvest, early exit", "harvest, no early exit")


def stdlib_text(min_chars: int) -> str:
    """Docstrings of standard-library modules and their public members, in a fixed order."""
    parts: list[str] = []
    for name in STDLIB:
        module = importlib.import_module(name)
        members = [getattr(module, m, None) for m in sorted(dir(module)) if not m.startswith("_")]
        for obj in (module, *members):
            doc = inspect.getdoc(obj) if obj is not None else None
            if doc and doc not in parts:
                parts.append(doc)
        if sum(map(len, parts)) >= min_chars:
            break
    return "\n\n".join(parts)


def modes(model: torch.nn.Module, hooks: list[str]) -> dict[str, Callable[[Tensor], None]]:
    """Each mode as a function of one batch of contexts."""

    @torch.no_grad()
    def forward(ids: Tensor) -> None:
        model(ids)

    def harvest_one(early_exit: bool) -> Callable[[Tensor], None]:
        def run(ids: Tensor) -> None:
            for _ in harvest(model, ids, hooks, batch_size=ids.shape[0], early_exit=early_exit):
                pass

        return run

    return dict(zip(MODES, (forward, harvest_one(True), harvest_one(False)), strict=True))


def measure(
    runs: dict[str, Callable[[Tensor], None]], batches: list[Tensor], rounds: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per mode: seconds for all batches in each round, and the sum over batches of each
    batch's best round. Within a round every batch goes through every mode in turn (the order
    rotating), so bursts of other work on the machine hit all modes alike; one warm-up batch
    per mode first."""
    for run in runs.values():
        run(batches[0])
    names = list(runs)
    totals = {mode: [0.0] * rounds for mode in names}
    best = {mode: [math.inf] * len(batches) for mode in names}
    for r in range(rounds):
        for b, ids in enumerate(batches):
            shift = (r + b) % len(names)
            for mode in names[shift:] + names[:shift]:
                start = time.perf_counter()
                runs[mode](ids)
                seconds = time.perf_counter() - start
                totals[mode][r] += seconds
                best[mode][b] = min(best[mode][b], seconds)
    return totals, {mode: sum(best[mode]) for mode in names}


def write_results(
    path: Path, a: argparse.Namespace, info: dict, times: dict[str, list[float]], best: dict
) -> None:
    tokens = info["tokens"]
    rows = [
        f"| {mode} | {best[mode]:.3f} | {tokens / best[mode]:,.0f} | "
        f"{best['forward'] / best[mode]:.2f} | {' / '.join(f'{t:.3f}' for t in ts)} |"
        for mode, ts in times.items()
    ]
    exit_gain = best["harvest, no early exit"] / best["harvest, early exit"]
    overhead = best["harvest, no early exit"] / best["forward"]
    skipped = info["n_layers"] - info["layers_run"]
    threads = torch.get_num_threads()
    ideal = info["n_layers"] / info["layers_run"]
    lines = [
        "# Harvest speed",
        "",
        f"Written by `bench/harvest.py` (`make bench-harvest`) on {date.today().isoformat()}.",
        "",
        f"- Model: `{a.model}` ({info['model_type']}, {info['n_layers']} layers, "
        f"d {info['d_model']}), loaded in {info['load_s']:.2f} s.",
        f"- Hook points: {', '.join(f'`{h}`' for h in a.hooks)}; with early exit the pass "
        f"stops after `{info['last_layer']}`: {info['layers_run']} of {info['n_layers']} "
        "layers run.",
        f"- Text: standard-library docstrings, {tokens:,} tokens in {info['contexts']} "
        f"contexts of {a.context}, batches of {a.batch}; float32, no gradients.",
        f"- Machine: {cpu_name()}, torch {torch.__version__} with {threads} "
        f"thread{'s' if threads > 1 else ''}, Python {platform.python_version()}; "
        f"best of {a.rounds} rounds per batch, modes interleaved; load average (1 min) "
        f"{info['load_before']:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other work on the machine slows every mode alike).",
        "",
        "| mode | seconds (best) | tokens/s | speed vs forward | each round's total (s) |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"- Early exit vs running to the end: {exit_gain:.2f}x as fast ({skipped} of "
        f"{info['n_layers']} layers skipped; their share of the work alone predicts about "
        f"{ideal:.2f}x).",
        f"- Harvest to the end vs the bare forward: {overhead:.2f}x the time (the hooks, "
        "detaching and reshaping the rows).",
        "",
    ]
    text = "\n".join(lines)
    path.write_text(text)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="a model name or a local folder")
    p.add_argument("--hooks", nargs="+", default=["encoder.layer.2", "encoder.layer.4"])
    p.add_argument("--tokens", type=int, default=4096, help="tokens per pass (whole contexts)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=4, help="contexts per batch (small: more samples)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=HERE / "HARVEST.md")
    return p.parse_args(argv)


def _layers(model: torch.nn.Module) -> tuple[list[str], int]:
    """The model's block paths (the longest ModuleList) and their count."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    name, blocks = max(lists, key=lambda nm: len(nm[1]))
    return [f"{name}.{i}" for i in range(len(blocks))], len(blocks)


def _layer_of(hook: str, paths: list[str]) -> int:
    """Index of the block a hook point sits in (its own path, a submodule's, or ":in")."""
    path = hook.partition(":")[0]
    for i, block in enumerate(paths):
        if path == block or path.startswith(block + "."):
            return i
    raise SystemExit(f"hook {hook!r} is not inside one of the blocks {paths[0]}..{paths[-1]}")


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    model, tok = load_model(a.model)
    load_s = time.perf_counter() - start
    n_ctx = a.tokens // a.context
    ids = tok.encode(stdlib_text(min_chars=8 * a.tokens))
    ctx = pack(ids, a.context)[:n_ctx]
    if ctx.shape[0] < n_ctx:
        raise SystemExit(f"only {ctx.shape[0]} contexts of text; lower --tokens")
    paths, n_layers = _layers(model)
    layers_run = 1 + max(_layer_of(h, paths) for h in a.hooks)
    info = {
        "tokens": ctx.numel(),
        "load_before": load_before,
        "contexts": ctx.shape[0],
        "load_s": load_s,
        "model_type": type(model).__name__,
        "n_layers": n_layers,
        "d_model": getattr(getattr(model, "config", None), "hidden_size", "?"),
        "last_layer": paths[layers_run - 1],
        "layers_run": layers_run,
    }
    batches = list(ctx.split(a.batch))
    times, best = measure(modes(model, a.hooks), batches, a.rounds)
    for mode, seconds in best.items():
        print(f"{mode:24s} best {seconds:.3f} s  {info['tokens'] / seconds:8,.0f} tokens/s")
    write_results(a.out, a, info, times, best)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
