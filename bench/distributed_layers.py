"""`--parallel layers` on 2 CPU ranks against one process training the same 4 SAEs (one per
glassllm block), side by side in one run, and the bytes each rank sends per step; writes
bench/DISTRIBUTED_LAYERS.md.

    .venv/bin/python bench/distributed_layers.py [--steps N] [--rounds R]

Each measurement is a fresh process (or 2 rank processes with torchrun's variables, gloo, one
torch thread each) that times `runs.train_hooks` itself (the model's forward, the exchange,
the 4 SAEs' training, the final saves; not the imports). The one-process run gets one thread
(the same per-process budget) and two (the same machine budget). Rounds alternate the modes,
so bursts of other work on the machine hit them alike; each mode's best round is kept.
Bytes: what `parallel.layers.Exchange` hands gloo per step on each rank (its padded rows of
the hook points other ranks own), against the model W-1 shares of N/W rows x d x 4 bytes
for each hook point another rank owns.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HOOKS = ["layers.0", "layers.1", "layers.2", "layers.3"]
SETTINGS = {"context": 65, "batch": 2048, "d_sae": 2048, "k": 32}
HERE = Path(__file__).resolve().parent


def worker(out: Path, steps: int) -> None:
    """One process of a measurement (rank r of WORLD_SIZE, or alone)."""
    import torch

    from saescope import parallel, runs
    from saescope.runs import layers
    from saescope.training import TrainConfig

    exchanges: list = []

    class Counted(layers.Exchange):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            exchanges.append(self)

    layers.Exchange = Counted  # type: ignore[misc]
    base = runs.DataSpec.for_model("glassllm", context=SETTINGS["context"])
    datas = runs.hook_specs(base, HOOKS)
    streams = [d.open(SETTINGS["batch"]) for d in datas]
    cfg = TrainConfig(steps=steps, progress=False, checkpoint_every=0, checkpoint_minutes=0)
    saes = []
    for s in streams:
        torch.manual_seed(0)
        saes.append(runs.build_sae("topk", s, d_sae=SETTINGS["d_sae"], k=SETTINGS["k"]))
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports dynamo
    with parallel.launched("layers") as group, tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        runs.train_hooks(saes, datas, streams, cfg, Path(tmp) / "run", group=group)
        seconds = time.perf_counter() - t
        rank = group.rank if group else 0
        ex = exchanges[0] if exchanges else None
        got = {
            "seconds": seconds,
            "tokens": steps * streams[0].tokens_per_batch,
            "sent_per_step": ex.sent / max(ex.steps, 1) if ex else 0,
            "exchanges": ex.steps if ex else 0,
            "d": [s.d_in for s in streams],
            "rows": streams[0].tokens_per_batch,
        }
        (out.with_suffix(f".{rank}.json")).write_text(json.dumps(got))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(ranks: int, threads: int, steps: int, tmp: Path) -> list[dict]:
    out = tmp / f"w{ranks}-{threads}-{time.monotonic_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    argv = [sys.executable, __file__, "--worker", str(out), "--steps", str(steps)]
    if ranks == 1:
        subprocess.run(argv, env=env, check=True)
        return [json.loads(out.with_suffix(".0.json").read_text())]
    port, procs = _port(), []
    for r in range(ranks):
        dist = {"RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(ranks)}
        dist |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen(argv, env={**env, **dist}))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("a rank failed")
    return [json.loads(out.with_suffix(f".{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.worker:
        return worker(ns.worker, ns.steps)
    modes = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (1, 2), "2 ranks": (2, 1)}
    best: dict[str, list[dict]] = {}
    ns.load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ns.rounds):
            order = list(modes) if i % 2 == 0 else list(reversed(modes))
            for name in order:
                got = measure(*modes[name], ns.steps, Path(tmp))
                secs = max(g["seconds"] for g in got)
                if name not in best or secs < max(g["seconds"] for g in best[name]):
                    best[name] = got
                print(f"round {i}: {name}: {secs:.2f} s", flush=True)
    ns.load.append(os.getloadavg()[0])
    write(best, ns)


def write(best: dict[str, list[dict]], ns: argparse.Namespace) -> None:
    sys.path.insert(0, str(HERE))
    from machine import cpu_name

    rate = {n: g[0]["tokens"] / max(x["seconds"] for x in g) for n, g in best.items()}
    two = best["2 ranks"]
    d, rows = two[0]["d"], two[0]["rows"]
    # rank 0 owns hooks 0 and 2, rank 1 hooks 1 and 3: each sends its N/2 rows of 2 hooks
    model = [(rows // 2) * (d[1] + d[3]) * 4, (rows - rows // 2) * (d[0] + d[2]) * 4]
    lines = [
        "# `--parallel layers`: 2 CPU ranks against one process, 4 glassllm SAEs",
        "",
        f"`python bench/distributed_layers.py --steps {ns.steps} --rounds {ns.rounds}`, "
        f"{date.today()}, {cpu_name()}, {os.cpu_count()} cores shared with other work (load "
        f"average {ns.load[0]:.1f} at the start, {ns.load[1]:.1f} at the end).",
        f"Hook points {', '.join(HOOKS)}; context {SETTINGS['context']}, batch {rows} tokens, "
        f"TopK d_sae {SETTINGS['d_sae']}, k {SETTINGS['k']}, {ns.steps} steps; gloo.",
        "",
        "| mode | seconds (best round) | tokens/s | ratio to 1 process, 1 thread |",
        "|---|---|---|---|",
    ]
    base = rate["1 process, 1 thread"]
    for n, g in best.items():
        secs = max(x["seconds"] for x in g)
        lines.append(f"| {n} | {secs:.2f} | {rate[n]:,.0f} | {rate[n] / base:.2f} |")
    lines += [
        "",
        "Bytes each rank sends per step (the exchange; measured against the model "
        "N/W rows x d x 4 bytes of each hook point another rank owns, rows padded to the "
        "larger share):",
        "",
        "| rank | measured bytes/step | model bytes/step | exchanges |",
        "|---|---|---|---|",
    ]
    for r, g in enumerate(two):
        lines.append(f"| {r} | {g['sent_per_step']:,.0f} | {model[r]:,} | {g['exchanges']} |")
    (HERE / "DISTRIBUTED_LAYERS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
