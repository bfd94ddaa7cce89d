"""Training and evaluation on a CUDA GPU, checked against the CPU; writes bench/GPU.md.

    .venv/bin/python bench/gpu.py [--out DIR]      # needs a CUDA build of torch and a GPU

saescope's CPU kernels are its own; on a GPU the same code runs through torch's CUDA ops.
This script checks that the GPU path gives the CPU's results and measures its speed:

1. agreement: every architecture trained 400 steps on the seed article's synthetic task
   (d_in 32, 64 true features) on the CPU and on the GPU from the same initial weights and
   the same batches; the final explained variance and L0 of each, and the cosine between the
   two decoders' rows.
2. resume on the GPU: 300 steps uninterrupted against 150 steps, then resumed for 150; the
   largest weight difference (bitwise on the CPU; on the GPU some ops are not deterministic).
3. evaluation on the GPU (`Run.open(path, device="cuda")`) against the CPU's, same SAE.
4. speed: TopK (k 32) and ReLU SAEs with d_in 768 and d_sae 24,576 on random rows, batches
   of 4096 tokens, tokens per second of whole training steps (sparse and dense for TopK), the
   GPU against the CPU measured in the same run; each also with `precision="bf16"` on the GPU
   (issue 19: the encoder product in bfloat16; the CPU column runs at `auto` there).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import traceback
from datetime import date
from pathlib import Path

import torch
from machine import cpu_name  # bench/machine.py: this file runs as a script

from saescope import TrainConfig, make_sae, train
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.data.stream import RowBatches
from saescope.runs import DataSpec, Run, train_run

HERE = Path(__file__).resolve().parent
GPU = "cuda"  # --device: another device (cpu) only to smoke-test this script
ARCHS = {
    "relu": {"l1_coef": 3.0},
    "topk": {"k": 4},
    "batchtopk": {"k": 4},
    "gated": {"l1_coef": 1.0},
    "jumprelu": {"l0_coef": 1.0},
}
TASK = ArticleTaskConfig(d_in=32, n_features=64, max_active=4)


def _cos_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def agreement(out: Path) -> list[dict]:
    rows = []
    for arch, extra in ARCHS.items():
        torch.manual_seed(0)
        base = make_sae({"architecture": arch, "d_in": 32, "d_sae": 256, **extra})
        got = {}
        for dev in ("cpu", GPU):
            sae = copy.deepcopy(base)
            cfg = TrainConfig(steps=400, device=dev, progress=False, log_every=400)
            res = train(
                sae, ArticleTask(TASK, 512, 0), cfg, out / f"agree_{arch}_{dev}", overwrite=True
            )
            got[dev] = (res.final_metrics[0], res.saes[0])
        m_cpu, m_gpu = got["cpu"][0], got[GPU][0]
        rows.append(
            {
                "arch": arch,
                "ev_cpu": m_cpu["explained_variance"],
                "ev_gpu": m_gpu["explained_variance"],
                "l0_cpu": m_cpu["l0"],
                "l0_gpu": m_gpu["l0"],
                "decoder_cosine": _cos_rows(got["cpu"][1].W_dec, got[GPU][1].W_dec),
            }
        )
        print(rows[-1], flush=True)
    return rows


def resume(out: Path) -> dict:
    torch.manual_seed(1)
    sae = make_sae({"architecture": "topk", "d_in": 32, "d_sae": 256, "k": 4})
    cfg = TrainConfig(steps=300, device=GPU, progress=False, checkpoint_every=150)
    whole = train(copy.deepcopy(sae), ArticleTask(TASK, 512, 0), cfg, out / "whole", overwrite=True)
    try:
        stream = _stopping(ArticleTask(TASK, 512, 0), 150)
        train(copy.deepcopy(sae), stream, cfg, out / "resumed", overwrite=True)
    except StopAt:
        pass
    again = train(copy.deepcopy(sae), ArticleTask(TASK, 512, 0), cfg, out / "resumed", resume=True)
    diff = float((whole.saes[0].W_dec - again.saes[0].W_dec).detach().abs().max())
    return {"max_abs_diff": diff, "bitwise": diff == 0.0}


class StopAt(Exception):
    """Stands for a kill after the checkpoint at step 150."""


def _stopping(stream, n: int):
    """The stream's batches, stopping the run when batch n is asked for."""
    for i, b in enumerate(stream):
        if i == n:
            raise StopAt
        yield b


def evaluation(out: Path) -> dict:
    data = DataSpec.synthetic(TASK, seed=0)
    torch.manual_seed(2)
    sae = make_sae({"architecture": "topk", "d_in": 32, "d_sae": 256, "k": 4})
    cfg = TrainConfig(steps=300, progress=False)
    train_run(sae, data, data.open(512), cfg, out / "eval_run", overwrite=True)
    cpu = next(iter(Run.open(out / "eval_run").evaluate(16384, plot=False).values()))
    gpu = next(iter(Run.open(out / "eval_run", device=GPU).evaluate(16384, plot=False).values()))
    keys = ("l0", "mse", "explained_variance", "mmcs")
    return {k: (cpu[k], gpu[k]) for k in keys}


def speed() -> list[dict]:
    rows = []
    torch.manual_seed(3)
    data = torch.randn(65536, 768)
    for arch, extra, mode in (
        ("topk", {"k": 32}, "sparse"),
        ("topk", {"k": 32}, "dense"),
        ("relu", {"l1_coef": 5.0}, "auto"),
    ):
        for prec in ("fp32", "bf16"):
            got = {}
            for dev, steps in ((GPU, 60), ("cpu", 4)):
                sae = make_sae({"architecture": arch, "d_in": 768, "d_sae": 24576, **extra})
                sae.sparse_mode = mode
                times: list[float] = []
                batches = _timed(RowBatches(data, 4096, 0), times, dev)
                at = prec if dev != "cpu" or prec == "fp32" else "auto"
                cfg = TrainConfig(
                    steps=steps, device=dev, progress=False, log_every=10**6, precision=at
                )
                train(sae, batches, cfg)
                warm = times[len(times) // 3 :]
                got[dev] = 4096 * len(warm) / sum(warm)
            row = {"arch": arch, "mode": mode, "precision": prec}
            rows.append({**row, "gpu_tok_s": got[GPU], "cpu_tok_s": got["cpu"]})
        print(rows[-1], flush=True)
    return rows


def _timed(stream, times: list[float], dev: str):
    """The stream's batches, recording the time between one batch asked for and the next
    (one training step), the GPU synchronised."""
    last = None
    for b in stream:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        last = now
        yield b


def _guarded(part, out: Path):
    """A part's result, or its error (so one failing part leaves the others' results)."""
    try:
        return part(out)
    except Exception as e:
        traceback.print_exc()
        return {"error": f"{type(e).__name__}: {e}"}


def report(results: dict) -> str:
    gpu = torch.cuda.get_device_name(0) if GPU == "cuda" else GPU
    lines = [
        "# saescope on a GPU",
        "",
        f"{date.today()}, {gpu}, torch {torch.__version__}, CPU {cpu_name()} "
        f"({platform.machine()}); written by `bench/gpu.py`.",
    ]
    for name, title in TITLES.items():
        lines += ["", f"## {title}", ""]
        got = results[name]
        if isinstance(got, dict) and "error" in got:
            lines.append(f"Failed: `{got['error']}`")
        else:
            lines += RENDER[name](got)
    return "\n".join(lines) + "\n"


def _agreement_rows(rows: list[dict]) -> list[str]:
    out = [
        "| arch | EV cpu | EV gpu | L0 cpu | L0 gpu | decoder cosine |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['arch']} | {r['ev_cpu']:.4f} | {r['ev_gpu']:.4f} | {r['l0_cpu']:.2f} | "
            f"{r['l0_gpu']:.2f} | {r['decoder_cosine']:.4f} |"
        )
    return out


def _resume_rows(rs: dict) -> list[str]:
    kind = "bitwise equal" if rs["bitwise"] else "not bitwise equal"
    return [f"Largest weight difference {rs['max_abs_diff']:.3g} ({kind})."]


def _evaluation_rows(got: dict) -> list[str]:
    out = ["| metric | cpu | gpu |", "|---|---|---|"]
    return out + [f"| {k} | {c:.5g} | {g:.5g} |" for k, (c, g) in got.items()]


def _speed_rows(rows: list[dict]) -> list[str]:
    out = ["| arch | path | precision | GPU | CPU | GPU / CPU |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['arch']} | {r['mode']} | {r.get('precision', 'fp32')} | "
            f"{r['gpu_tok_s']:,.0f} | {r['cpu_tok_s']:,.0f} | "
            f"{r['gpu_tok_s'] / r['cpu_tok_s']:.0f}x |"
        )
    return out


TITLES = {
    "agreement": "CPU and GPU agree (400 steps, synthetic task, same initial weights and batches)",
    "resume": "Resume on the GPU (150 steps, then resumed to 300, against 300 in one go)",
    "evaluation": "Evaluation on the GPU against the CPU (same SAE, 16,384 held-out tokens)",
    "speed": "Speed: d_in 768, d_sae 24,576, batches of 4096 (tokens per second, whole steps)",
}
RENDER = {
    "agreement": _agreement_rows,
    "resume": _resume_rows,
    "evaluation": _evaluation_rows,
    "speed": _speed_rows,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / ".gpu_runs")
    p.add_argument("--report", type=Path, default=HERE / "GPU.md")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--skip-speed", action="store_true")
    ns = p.parse_args()
    global GPU
    GPU = ns.device
    if GPU == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a GPU and a CUDA build of torch")
    ns.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for name, part in (("agreement", agreement), ("resume", resume), ("evaluation", evaluation)):
        results[name] = _guarded(part, ns.out)
    results["speed"] = (
        {"error": "skipped"} if ns.skip_speed else _guarded(lambda _: speed(), ns.out)
    )
    (ns.out / "gpu.json").write_text(json.dumps(results, indent=1))
    ns.report.write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
