"""`saescope harvest`: a model's activations on text, into an on-disk cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from saescope.cli import options
from saescope.data.shards import CACHE_DTYPES
from saescope.runs import DataSpec, check_harvest, harvest

DTYPE_HELP = (
    "what the cache stores: float32 (default; a resumed cache keeps its own), bfloat16 (half "
    "the bytes, float32's range) or float16 (half the bytes, |x| <= 65504)"
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    hv = sub.add_parser("harvest", help="harvest a model's activations on text into a cache")
    hv.add_argument("--model", required=True, help=options.MODEL_HELP)
    hv.add_argument(
        "--hooks", nargs="+", required=True, help="hook points (PATH = output, PATH:in = input)"
    )
    hv.add_argument("--out", required=True, type=Path, help="cache folder (resumed if present)")
    hv.add_argument("--text", nargs="+", default=None, help=options.TEXT_HELP)
    hv.add_argument("--context", type=int, default=128, help="tokens per context")
    hv.add_argument("--tokens", type=int, help="tokens to harvest (default: all the text)")
    hv.add_argument("--batch-size", type=int, default=32, help="contexts per forward pass")
    hv.add_argument("--shard-contexts", type=int, default=256, help="contexts per shard file")
    hv.add_argument("--dtype", choices=CACHE_DTYPES, default=None, help=DTYPE_HELP)
    hv.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, cuda:N")
    return hv


def run(ns: argparse.Namespace) -> int:
    check_harvest(ns.out, ns.tokens, ns.batch_size, ns.shard_contexts, ns.dtype, ns.device)
    data = DataSpec.for_model(ns.model, text=ns.text, context=ns.context)
    if ns.tokens is not None and ns.tokens > data.tokens("train"):
        print(
            f"note: the text gives {data.tokens('train')} training tokens; harvesting all of them"
        )
    cache = harvest(
        data,
        ns.hooks,
        ns.out,
        ns.tokens,
        ns.batch_size,
        ns.shard_contexts,
        dtype=ns.dtype,
        device=ns.device,
    )
    hooks = ", ".join(f"{h} ({d})" for h, d in cache.hooks.items())
    print(
        f"{cache.n_rows} tokens x {hooks} in {len(cache.shards)} shards at {ns.out} "
        f"({cache.n_contexts} contexts, {cache.dtype_name})"
    )
    return 0
