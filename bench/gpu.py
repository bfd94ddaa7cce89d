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
5. cache dtypes on the GPU: rows made on the GPU (column scales 1e-2..1e3) written by
   `CacheWriter` as float32, bfloat16 and float16 (converted on the GPU, before the copy),
   read back as float32: equal to the rows rounded to the dtype, bytes per row, largest
   relative error; float16 beyond its range refused.
6. batch transfer: 4096 x 768 batches host to GPU, arriving as float32: pageable float32,
   pinned float32 (non_blocking), pinned bfloat16 (half the bytes, made float32 on the GPU).
7. training from a bfloat16 cache: glassllm harvested on the GPU (`--device cuda`) at
   layers.0.mlp:in on the repository's own docs (no corpus needed) into a float32 and a
   bfloat16 cache; a TopK SAE trained on the GPU from each (same tokens, seed and initial
   weights): explained variance and tokens per second; `eval`, `steer` and `index` of the
   bfloat16 run on the GPU (`Run.open(device="cuda")`), the evaluation against the CPU's.
8. latents: the latent-sharded step (`--parallel latents`) on the GPU, one rank holding
   every latent (`SoloLatents`), against the plain loop, each architecture it shards, 200
   steps: the largest weight difference (bitwise on the CPU).

    .venv/bin/python bench/gpu.py --only cache transfer bf16   # parts 5-7 alone
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shutil
import time
import traceback
from datetime import date
from pathlib import Path

import torch
from machine import cpu_name  # bench/machine.py: this file runs as a script

from saescope import TrainConfig, make_sae, train
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.data.cache import ActivationCache, CacheWriter
from saescope.data.shards import CACHE_DTYPES
from saescope.data.stream import RowBatches
from saescope.errors import InputError
from saescope.runs import DataSpec, Run, build_sae, harvest, train_run

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


def latents(out: Path) -> list[dict]:
    """The latent-sharded step (`--parallel latents`) on the GPU, one rank holding every
    latent, against the plain loop: its selections, sums and gradients on CUDA tensors."""
    from saescope.training.latents_loop import train_latents
    from saescope.training.shards import SHARDED, SoloLatents

    rows = []
    for arch in SHARDED:
        cfg = TrainConfig(steps=200, device=GPU, progress=False, dead_tokens=2048)
        got = []
        for sharded in (False, True):
            torch.manual_seed(4)
            sae = make_sae({"architecture": arch, "d_in": 32, "d_sae": 256, **ARCHS[arch]})
            stream = ArticleTask(TASK, 512, 0)
            run = (
                train_latents(sae, stream, SoloLatents(), cfg)
                if sharded
                else train(sae, stream, cfg)
            )
            got.append({k: v.cpu() for k, v in run.saes[0].state_dict().items()})
        rel = [
            (got[0][k] - got[1][k]).abs().max() / got[0][k].abs().max().clamp_min(1e-12)
            for k in got[0]
        ]
        rows.append({"arch": arch, "max_rel_diff": float(max(rel))})
    return rows


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


def cache_round_trip(out: Path) -> dict:
    gen = torch.Generator(device=GPU).manual_seed(4)
    n, d, per = 64 * 127, 256, 127
    scale = torch.logspace(-2, 3, d, device=GPU)
    rows = torch.randn(n, d, device=GPU, generator=gen) * scale
    got: dict = {}
    for name, dtype in CACHE_DTYPES.items():
        path = out / f"roundtrip_{name}"
        shutil.rmtree(path, ignore_errors=True)
        writer = CacheWriter(path, {"bench": "gpu"}, 16, name)
        for c in range(n // per):
            writer.add(_harvested(rows[c * per : (c + 1) * per], c), 1)
        writer.flush()
        back = ActivationCache(path).head("resid", n)
        want, plain = rows.to(dtype).float().cpu(), rows.cpu()
        normal = plain.abs() >= 1e-3  # float16's subnormals (< 6.1e-5) lose relative precision
        got[name] = {
            "exact": bool(torch.equal(back, want)),
            "max_rel_err": float(((back - plain).abs() / plain.abs())[normal].max()),
            "bytes_per_row": _size(path) / n,
        }
    try:
        big = _harvested(rows[:per] * 100, 0)  # columns up to 1e5: beyond float16
        CacheWriter(out / "roundtrip_over", {"bench": "gpu"}, 16, "float16").add(big, 1)
        got["float16_overflow"] = "NOT refused"
    except InputError as e:
        got["float16_overflow"] = str(e)
    shutil.rmtree(out / "roundtrip_over", ignore_errors=True)
    return got


def _harvested(x: torch.Tensor, context: int) -> dict:
    n = x.shape[0]
    idx = torch.arange(1, n + 1, device=x.device)
    return {"resid": x, "tokens": idx, "positions": idx, "contexts": torch.full_like(idx, context)}


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("shard-*"))


def _sync() -> None:
    if GPU.startswith("cuda"):
        torch.cuda.synchronize()


def transfer() -> list[dict]:
    if not GPU.startswith("cuda"):
        return {"error": "skipped: needs CUDA (pinned memory)"}  # type: ignore[return-value]
    host = torch.randn(4096, 768)
    kinds = {
        "pageable float32": host,
        "pinned float32": host.pin_memory(),
        "pinned bfloat16": host.bfloat16().pin_memory(),
    }
    rows = []
    for name, h in kinds.items():
        for _ in range(5):  # warm-up
            h.to(GPU, non_blocking=True).float()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(100):
            h.to(GPU, non_blocking=True).float()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / 100
        nbytes = h.numel() * h.element_size()
        rows.append({"kind": name, "ms": 1e3 * dt, "gb_s": nbytes / dt / 1e9, "tok_s": 4096 / dt})
        print(rows[-1], flush=True)
    return rows


GLASS_HOOK = "layers.0.mlp:in"


def bf16_training(out: Path) -> dict:
    text = out / "docs_text.txt"  # a snapshot: the held-out split must not move under the run
    docs = [*sorted((HERE.parent / "docs").glob("*.md")), HERE.parent / "README.md"]
    text.write_text("\n\n".join(p.read_text() for p in docs))
    model = DataSpec.for_model("glassllm", hook=GLASS_HOOK, text=[text], context=128)
    got: dict = {}
    for name in ("float32", "bfloat16"):
        path, run_dir = out / f"glass_{name}", out / f"glass_run_{name}"
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.perf_counter()
        cache = harvest(model, [GLASS_HOOK], path, dtype=name, device=GPU, progress=False)
        harvest_s = time.perf_counter() - t0
        spec = DataSpec.cache(path, GLASS_HOOK)
        stream = spec.open(1024, 0)
        torch.manual_seed(5)
        sae = build_sae("topk", stream, k=32)
        cfg = TrainConfig(steps=600, device=GPU, progress=False, log_every=600)
        t0 = time.perf_counter()
        res = train_run(sae, spec, stream, cfg, run_dir, overwrite=True)
        _sync()
        train_s = time.perf_counter() - t0
        got[name] = {
            "tokens": cache.n_rows,
            "bytes_per_token": _size(path) / cache.n_rows,
            "harvest_s": harvest_s,
            "ev_train": res.final_metrics[0]["explained_variance"],
            "train_tok_s": 600 * 1024 / train_s,
        }
        print(name, got[name], flush=True)
    run_dir = out / "glass_run_bfloat16"
    keys = ("explained_variance", "l0", "ce_loss_recovered")
    for dev in ("cpu", GPU):
        ev = next(iter(Run.open(run_dir, device=dev).evaluate(8192, plot=False).values()))
        got[f"eval_{dev}"] = {k: ev.get(k) for k in keys}
    got["steer"] = _steer_and_index(run_dir)
    return got


def _steer_and_index(run_dir: Path) -> str:
    """`steer` and `index` of a run on the GPU: what they gave, or their error."""
    from saescope.analysis import FeatureIndex, IndexConfig, index_run
    from saescope.steer.prompt import steer_prompt

    try:
        run = Run.open(run_dir, device=GPU)
        out = steer_prompt(run, [(0, 20.0)], "Alice was", max_new_tokens=8)
        path = index_run(run, cfg=IndexConfig(tokens=8192), progress=False)
        with FeatureIndex.open(path) as idx:
            n = idx.info.get("tokens")
        return f"ok: steered {out['steered']!r}; index of {n} tokens"
    except Exception as e:
        traceback.print_exc()
        return f"failed: {type(e).__name__}: {e}"


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
        if name not in results:
            continue
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


def _latents_rows(rows: list[dict]) -> list[str]:
    out = ["| architecture | largest weight difference, relative |", "|---|---|"]
    return out + [f"| {r['arch']} | {r['max_rel_diff']:.1e} |" for r in rows]


def _speed_rows(rows: list[dict]) -> list[str]:
    out = ["| arch | path | precision | GPU | CPU | GPU / CPU |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['arch']} | {r['mode']} | {r.get('precision', 'fp32')} | "
            f"{r['gpu_tok_s']:,.0f} | {r['cpu_tok_s']:,.0f} | "
            f"{r['gpu_tok_s'] / r['cpu_tok_s']:.0f}x |"
        )
    return out


def _cache_rows(got: dict) -> list[str]:
    out = ["| dtype | read back = rows rounded | bytes per row | max rel. error, abs(x) >= 1e-3 |"]
    out.append("|---|---|---|---|")
    for name in CACHE_DTYPES:
        r = got[name]
        out.append(f"| {name} | {r['exact']} | {r['bytes_per_row']:.0f} | {r['max_rel_err']:.2g} |")
    return [*out, "", f"float16 beyond its range: `{got['float16_overflow']}`"]


def _transfer_rows(rows: list[dict]) -> list[str]:
    out = ["| host batch | ms per batch | GB/s | tokens/s |", "|---|---|---|---|"]
    return out + [
        f"| {r['kind']} | {r['ms']:.3f} | {r['gb_s']:.1f} | {r['tok_s']:,.0f} |" for r in rows
    ]


def _bf16_rows(got: dict) -> list[str]:
    out = ["| cache | tokens | bytes/token | harvest s | train EV | train tokens/s |"]
    out.append("|---|---|---|---|---|---|")
    for name in ("float32", "bfloat16"):
        r = got[name]
        out.append(
            f"| {name} | {r['tokens']:,} | {r['bytes_per_token']:.0f} | {r['harvest_s']:.1f} | "
            f"{r['ev_train']:.4f} | {r['train_tok_s']:,.0f} |"
        )
    out += ["", "The bfloat16 run evaluated on held-out text (8,192 tokens):", ""]
    out += ["| device | EV | L0 | CE loss recovered |", "|---|---|---|---|"]
    for dev in ("cpu", GPU):
        e = got[f"eval_{dev}"]
        out.append(
            f"| {dev} | {e['explained_variance']:.5f} | {e['l0']:.2f} | "
            f"{e['ce_loss_recovered']:.5f} |"
        )
    return [*out, "", f"steer and index on the GPU: {got['steer']}"]


TITLES = {
    "agreement": "CPU and GPU agree (400 steps, synthetic task, same initial weights and batches)",
    "resume": "Resume on the GPU (150 steps, then resumed to 300, against 300 in one go)",
    "evaluation": "Evaluation on the GPU against the CPU (same SAE, 16,384 held-out tokens)",
    "speed": "Speed: d_in 768, d_sae 24,576, batches of 4096 (tokens per second, whole steps)",
    "cache": "Cache dtypes: rows made on the GPU, written as each dtype, read back as float32",
    "transfer": "Batch transfer host to GPU (4096 x 768, arriving as float32)",
    "bf16": "Training from a bfloat16 cache (glassllm layers.0.mlp:in, harvested on the GPU)",
    "latents": "The latent-sharded step on the GPU, one rank, against the plain loop (200 steps)",
}
RENDER = {
    "agreement": _agreement_rows,
    "resume": _resume_rows,
    "evaluation": _evaluation_rows,
    "speed": _speed_rows,
    "cache": _cache_rows,
    "transfer": _transfer_rows,
    "bf16": _bf16_rows,
    "latents": _latents_rows,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=HERE / ".gpu_runs")
    p.add_argument("--report", type=Path, default=HERE / "GPU.md")
    p.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--only", nargs="+", choices=list(TITLES), help="run only these parts")
    ns = p.parse_args()
    global GPU
    GPU = ns.device
    if GPU == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a GPU and a CUDA build of torch")
    ns.out.mkdir(parents=True, exist_ok=True)
    parts = {
        "agreement": agreement,
        "resume": resume,
        "evaluation": evaluation,
        "speed": lambda _: {"error": "skipped"} if ns.skip_speed else speed(),
        "cache": cache_round_trip,
        "transfer": lambda _: transfer(),
        "bf16": bf16_training,
        "latents": latents,
    }
    results: dict = {}
    for name in ns.only or list(parts):
        t0 = time.perf_counter()
        results[name] = _guarded(parts[name], ns.out)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    (ns.out / "gpu.json").write_text(json.dumps(results, indent=1))
    ns.report.write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
