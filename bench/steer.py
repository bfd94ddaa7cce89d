"""The price of steering during generation: per-token time of cached greedy generation with
no intervention, one, and three (at three hook points), on glassllm and SmolLM2, side by side
in one run; writes bench/STEER.md.

    make bench-steer                 # or: .venv/bin/python bench/steer.py [--new-tokens N]

Each intervention is a `FeatureEdits` clamping one feature of a TopK SAE (d_sae = 8 x the
residual width, k = 32) on the residual stream, error term included: exactly what `saescope
steer` applies. The SAEs are freshly initialised: the work per token (encode, top-k, one
decoder row) does not depend on the weights' values. One intervention sits at the middle
block; three at the blocks a quarter, half and three quarters of the way up.

In each of --rounds rounds every mode runs once (the order rotating, so bursts of other work
on the machine hit all modes alike); a mode's time is its best round, and its median round is
listed too. One torch thread by default (--threads), as on a shared 2-core machine two threads
stall whenever other work takes a core. Per-token time is a generation call's time divided by
its new tokens, after an 8-token prompt (prefill included: it is one pass of 8 tokens).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from machine import cpu_name  # bench/machine.py: this file runs as a script

from saescope.models import load_model
from saescope.models.generate import generate
from saescope.saes import make_sae
from saescope.steer import Edit, FeatureEdits, steering

HERE = Path(__file__).resolve().parent
PROMPT = "The Queen said to the King that"
MODELS = {"glassllm": "layers.{}", "smollm2": "model.layers.{}"}
MODES = ("none", "one intervention", "three interventions", "none, no KV cache")


def _blocks(model: torch.nn.Module, pattern: str) -> int:
    names = dict(model.named_modules())
    return sum(1 for i in range(1000) if pattern.format(i) in names)


def _edit(hook: str, d: int, seed: int) -> FeatureEdits:
    torch.manual_seed(seed)
    sae = make_sae({"architecture": "topk", "d_in": d, "d_sae": 8 * d, "k": 32}).eval()
    return FeatureEdits(hook, sae=sae, edits=[Edit(seed, 10.0)])


def interventions(model: torch.nn.Module, pattern: str) -> dict[str, list[FeatureEdits]]:
    n = _blocks(model, pattern)
    probe: dict[str, int] = {}
    hook = dict(model.named_modules())[pattern.format(n // 2)]
    h = hook.register_forward_hook(lambda m, a, o: probe.update(d=o.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 2, dtype=torch.long))
    h.remove()
    width = probe["d"]
    one = [_edit(pattern.format(n // 2), width, 1)]
    three = [_edit(pattern.format(i), width, 2 + i) for i in (n // 4, n // 2, 3 * n // 4)]
    return {"one intervention": one, "three interventions": three}


def time_mode(model, ids, mode: str, ivs: dict, new: int) -> float:
    use_cache = mode != "none, no KV cache"
    chosen = ivs.get(mode, [])
    t = time.perf_counter()
    with torch.no_grad(), steering(model, chosen):
        generate(model, ids, new, use_cache=use_cache)
    return (time.perf_counter() - t) / new


def bench_model(name: str, new: int, rounds: int) -> dict[str, list[float]]:
    model, tok = load_model(name)
    ids = torch.tensor([tok.encode(PROMPT)[:8]])
    ivs = interventions(model, MODELS[name])
    times: dict[str, list[float]] = {m: [] for m in MODES}
    time_mode(model, ids, "none", ivs, 2)  # warm-up
    for r in range(rounds):
        order = MODES[r % len(MODES) :] + MODES[: r % len(MODES)]
        for mode in order:
            times[mode].append(time_mode(model, ids, mode, ivs, new))
        print(name, r, {m: round(1000 * v[-1], 2) for m, v in times.items()}, flush=True)
    return times


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    lines = [
        "# Steering during generation: per-token time",
        "",
        f"Written by `bench/steer.py` on {date.today()}: {cpu_name()}, {platform.system()}, "
        f"torch {torch.__version__}, {args.threads} torch thread(s); greedy generation of "
        f"{args.new_tokens} new tokens after an 8-token prompt, best of {args.rounds} "
        "interleaved rounds (median in brackets).",
        "",
        "| model | mode | ms per token | ratio to none |",
        "|---|---|---|---|",
    ]
    for name, times in results.items():
        base = min(times["none"])
        for mode in MODES:
            best, med = min(times[mode]), statistics.median(times[mode])
            lines.append(
                f"| {name} | {mode} | {1000 * best:.2f} ({1000 * med:.2f}) | {best / base:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--new-tokens", type=int, default=40)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--out", type=Path, default=HERE / "STEER.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {m: bench_model(m, args.new_tokens, args.rounds) for m in args.models}
    text = report(results, args)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
