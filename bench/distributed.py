"""Data-parallel training on 2 CPU ranks (gloo) against one process on the same global batches:
tokens/s of each and their ratio, side by side in one run, and the bytes each rank moved per
step (the byte meter, `DDPGroup.meter`) against the communication model of docs/SCALING.md
(`parallel.plan.ddp_collectives`, `parallel.wire`). Writes bench/DISTRIBUTED.md
(`make bench-dist`). A few minutes on 2 cores.

    python bench/distributed.py [--steps 24] [--d-in 512] [--d-sae 8192] [--batch 4096]

Each configuration runs in fresh processes, one after the other (never two at once): one
process with 1 thread, one process with 2 threads, and 2 ranks with 1 thread each (started as
torchrun starts them: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Every run trains the same SAE
from the same seed on the same batches of one .npy file; the 2-rank SAE is compared with the
1-process one.

MODES maps a parallel mode to the function that measures it and returns its table rows; the
layers and latents modes add theirs there (e.g. `from distributed_layers import rows`).
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # bench/ is on sys.path when a script here runs

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
ARCHS = {"topk": {"k": 64}, "relu": {"l1_coef": 1.0}}
TAIL_STEPS = 2  # the loop gathers the last batches (finish.Tail: 8192 tokens) at batch 4096


# ----- one run (in its own process) ---------------------------------------------------------


def worker(ns: argparse.Namespace) -> None:
    """Train ns.arch on ns.data alone or as this rank of torchrun's world; write what it
    measured (rank 0, or the one process) to ns.worker as JSON."""
    sys.path.insert(0, str(SRC))
    from saescope import parallel
    from saescope.data.files import ActivationFile
    from saescope.saes import make_sae
    from saescope.training import TrainConfig, train

    torch.set_num_threads(ns.threads)
    with parallel.launched() as group:
        stream = ActivationFile(ns.data, batch_size=ns.batch, seed=1)
        batches = stream if group is None else parallel.Shard(stream, group.rank, group.size)
        torch.manual_seed(0)
        spec = {"architecture": ns.arch, "d_in": ns.d_in, "d_sae": ns.d_sae, **ARCHS[ns.arch]}
        sae = make_sae(spec)
        marks: list[tuple[int, float, dict]] = []
        read = batches.batch

        def batch(i: int):
            marks.append((i, time.perf_counter(), group.meter.snapshot() if group else {}))
            return read(i)

        batches.batch = batch  # type: ignore[method-assign]
        cfg = TrainConfig(
            steps=ns.steps,
            log_every=ns.steps,
            checkpoint_every=0,
            checkpoint_minutes=0,
            progress=False,
            init_samples=ns.batch,
        )
        result = train(sae, batches, cfg, None, group=group)
        if group is not None and group.rank != 0:
            return
        first, last = ns.warm, ns.steps - TAIL_STEPS  # steps [first, last): no init, no tail
        t = {i: (when, snap) for i, when, snap in marks}
        per_step = [_minus(t[i + 1][1], t[i][1]) for i in range(first, last)]
        out = {
            "tokens_per_s": ns.batch * (last - first) / (t[last][0] - t[first][0]),
            "steps_timed": last - first,
            "per_step": per_step,
            "tensors": len(list(sae.parameters())),
            "loss": result.final_metrics[0].get("loss"),
        }
        torch.save(sae.state_dict(), ns.worker + ".pt")
        Path(ns.worker).write_text(json.dumps(out))


def _minus(after: dict, before: dict) -> dict:
    """Each kind's counts between two meter snapshots."""
    out = {}
    for kind, a in after.items():
        b = before.get(kind, {})
        out[kind] = {k: (v - (b.get(k) or 0) if v is not None else None) for k, v in a.items()}
    return out


# ----- the parent: launch, compare, tabulate ----------------------------------------------------


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ns: argparse.Namespace, arch: str, ranks: int, threads: int, out: Path) -> dict:
    """One configuration in fresh processes; what rank 0 measured."""
    argv = [sys.executable, __file__, "--worker", str(out), "--arch", arch]
    argv += ["--threads", str(threads), "--data", str(ns.data), "--steps", str(ns.steps)]
    argv += ["--warm", str(ns.warm), "--batch", str(ns.batch), "--d-in", str(ns.d_in)]
    argv += ["--d-sae", str(ns.d_sae)]
    port, procs = _port(), []
    for r in range(ranks):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(SRC)}
        if ranks > 1:
            env.update(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(ranks))
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(argv, env=env))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{arch} on {ranks} rank(s) failed (exit {p.returncode})")
    return json.loads(out.read_text()) | {"weights": torch.load(str(out) + ".pt")}


def _rel_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)) for k in a)


def ddp_rows(ns: argparse.Namespace, tmp: Path) -> list[dict]:
    """topk and relu: 1 process x 1 thread, 1 process x 2 threads, 2 ranks x 1 thread."""
    sys.path.insert(0, str(SRC))
    from saescope.parallel import plan

    rows = []
    for arch in ARCHS:
        one = launch(ns, arch, 1, 1, tmp / f"{arch}-1x1.json")
        two_threads = launch(ns, arch, 1, 2, tmp / f"{arch}-1x2.json")
        ddp = launch(ns, arch, 2, 1, tmp / f"{arch}-2x1.json")
        steps = ddp["per_step"]
        model_bytes = [{k: (v["tensor"], v["wire"]) for k, v in s.items()} for s in steps]
        same = all(m == model_bytes[0] for m in model_bytes)  # (socket bytes: + heartbeats)
        size = plan.SAESize(ns.d_in, ns.d_sae, ARCHS[arch].get("k", 64))
        model = plan.ddp_collectives(size, 2, tensors=ddp["tensors"], terms=2)
        rows.append(
            {
                "mode": "ddp",
                "arch": arch,
                "tokens_per_s": {
                    "1 process, 1 thread": one["tokens_per_s"],
                    "1 process, 2 threads": two_threads["tokens_per_s"],
                    "2 ranks, 1 thread each": ddp["tokens_per_s"],
                },
                "max_rel_weight_diff": _rel_diff(ddp["weights"], one["weights"]),
                "threads_rel_weight_diff": _rel_diff(two_threads["weights"], one["weights"]),
                "steps_timed": ddp["steps_timed"],
                "every_step_the_same": same,
                "measured": steps[0],
                "step_totals": sorted({(s["total"]["calls"], s["total"]["tensor"]) for s in steps}),
                "model": {
                    "tensor": sum(c.nbytes for c in model),
                    "wire": sum(c.wire() for c in model),
                    "calls": len(model),
                },
            }
        )
        print(json.dumps(rows[-1], default=str)[:400], flush=True)
    return rows


MODES: dict[str, Callable[[argparse.Namespace, Path], list[dict]]] = {"ddp": ddp_rows}
"""Each parallel mode's measurement (layers and latents add theirs here)."""


def table(rows: list[dict]) -> list[str]:
    out = ["| mode | arch | 1 proc x 1 thread | 1 proc x 2 threads | 2 ranks x 1 thread | "]
    out[0] += "2 ranks / 1x1 | 2 ranks / 1x2 | weights: 2 ranks vs 1x1 | weights: 1x2 vs 1x1 |"
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b, c = r["tokens_per_s"].values()
        out.append(
            f"| {r['mode']} | {r['arch']} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {c / a:.2f} | "
            f"{c / b:.2f} | {r['max_rel_weight_diff']:.1e} | {r['threads_rel_weight_diff']:.1e} |"
        )
    out += ["", "| mode | arch | kind | calls | tensor bytes | wire bytes (model) | socket bytes |"]
    out.append("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        for kind, m in r["measured"].items():
            os_b = "" if m["os"] is None else f"{m['os']:,}"
            out.append(
                f"| {r['mode']} | {r['arch']} | {kind} | {m['calls']} | {m['tensor']:,} | "
                f"{m['wire']:,.0f} | {os_b} |"
            )
        distinct = ", ".join(f"{c} calls {t:,} B" for c, t in r["step_totals"])
        out.append(f"| {r['mode']} | {r['arch']} | (every timed step: {distinct}) | | | | |")
        mod = r["model"]
        out.append(
            f"| {r['mode']} | {r['arch']} | **docs/SCALING.md formula** | {mod['calls']} | "
            f"{mod['tensor']:,} | {mod['wire']:,.0f} | |"
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--warm", type=int, default=4, help="steps before timing starts")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", type=Path, default=HERE / "DISTRIBUTED.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.worker:
        return worker(ns)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ns.data = tmp / "acts.npy"
        g = np.random.default_rng(0)  # 8 batches of rows: a low-rank signal and noise
        basis = g.standard_normal((64, ns.d_in), dtype=np.float32)
        codes = np.maximum(g.standard_normal((8 * ns.batch, 64), dtype=np.float32), 0)
        noise = 0.1 * g.standard_normal((8 * ns.batch, ns.d_in), dtype=np.float32)
        np.save(ns.data, codes @ basis + noise)
        load = os.getloadavg()
        rows = [r for m in ns.modes.split(",") for r in MODES[m](ns, tmp)]
    head = [
        "# Several processes against one (`make bench-dist`, bench/distributed.py)",
        "",
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo; load average "
        f"before the run {load[0]:.2f}. d_in {ns.d_in}, d_sae {ns.d_sae}, global batch "
        f"{ns.batch} tokens, {ns.steps} steps; tokens/s over steps {ns.warm} to "
        f"{ns.steps - TAIL_STEPS - 1} (after the first batches, before the last ones gathered "
        "whole). Each configuration in fresh processes, one after the other.",
        "",
    ]
    ns.out.write_text("\n".join(head + table(rows)) + "\n")
    print(ns.out.read_text())


if __name__ == "__main__":
    main()
