"""End-to-end training speed on SmolLM2 (issue 19): `saescope train --model smollm2 --hook
model.layers.15 --tokens N` in fp32 and in bf16 against sparsify's own trainer on the same
model, text and hook, in one run; tokens/s including the model's forward; writes
bench/E2E.md with the CPU flags.

    make bench-e2e                  # or: .venv/bin/python bench/e2e.py [--tokens N]

- saescope fp32 / bf16: the CLI in a fresh process (`--precision fp32|bf16`), TopK, d_sae
  8 x 576, k 32, 1,024-token batches of 128-token contexts (the defaults); tokens/s from the
  run's own clock (metrics.jsonl: model forward + SAE step of the training steps; not the
  model's load, the tokenisation or the forward of the first batches that set the
  normalisation), and tokens / the whole command's wall time beside it (all of those).
- sparsify: `sparsify.Trainer.fit` (bench/e2e_sparsify.py, in the peers' venv of `make bench`)
  on the same token ids (saescope's training contexts of the default corpus) with the same
  float32 SmolLM2 folder loaded by transformers, its TopK SparseCoder at the same layer with
  the same d_sae, k and batch; tokens/s = tokens / fit()'s wall time.

The bf16 row runs only where the CPU multiplies bf16 natively (avx512_bf16 / amx_bf16) or
with --bf16 on: on an AVX2 CPU the bf16 forward is 10-25x slower than fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from machine import cpu_flags, cpu_name  # bench/machine.py: this file runs as a script

HERE = Path(__file__).resolve().parent
HOOK = "model.layers.15"
CONTEXT = 128


def _saescope(prec: str, a: argparse.Namespace, out: Path) -> dict:
    cmd = [
        sys.executable, "-m", "saescope", "train", "--model", "smollm2", "--hook", HOOK,
        "--tokens", str(a.tokens), "--arch", "topk", "--k", str(a.k), "--d-sae", str(a.d_sae),
        "--precision", prec, "--out", str(out), "--overwrite",
        "--log-every", "1000000", "--checkpoint-minutes", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"saescope {prec}: {proc.stderr.strip().splitlines()[-1:]}")
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    said = [ln for ln in proc.stdout.splitlines() if ln.startswith("precision:")]
    return {
        "impl": f"saescope {prec}",
        "tokens_per_s": last["tokens_per_s"],
        "wall_s": wall,
        "tokens": last.get("tokens", a.tokens),
        "setting": f"saescope train --precision {prec} ({said[0] if said else ''}); TopK "
        f"d_sae {a.d_sae}, k {a.k}, 1,024-token batches",
    }


def _sparsify(a: argparse.Namespace, tmp: Path) -> dict | None:
    py = a.peers_venv / "bin" / "python"
    if not py.is_file():
        print(f"sparsify skipped: no peers' venv at {a.peers_venv} (make bench builds it)")
        return None
    import torch

    from saescope.models.hf import smollm2_cache
    from saescope.runs import DataSpec

    data = DataSpec.for_model("smollm2", HOOK, context=CONTEXT)
    n = -(-a.tokens // (CONTEXT - 1))  # saescope drops each context's first position
    n = -(-n // 8) * 8
    torch.save(data.contexts("train")[:n].clone(), tmp / "ids.pt")
    cmd = [
        str(py), str(HERE / "e2e_sparsify.py"), "--ids", str(tmp / "ids.pt"),
        "--model", str(smollm2_cache()), "--hook", HOOK.removeprefix("model."),
        "--d-sae", str(a.d_sae), "--k", str(a.k), "--contexts-per-batch", "8",
        "--threads", str(a.threads),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        print(f"sparsify failed: {(proc.stderr or 'no output').strip().splitlines()[-1:]}")
        return None
    r = json.loads(lines[-1])
    return {"impl": "sparsify", "tokens_per_s": r["tokens"] / r["wall_s"], **r}


def _bf16_ok(a: argparse.Namespace) -> bool:
    from saescope import lowp

    if a.bf16 == "on" or (a.bf16 == "auto" and lowp.native_matmul("cpu")):
        return True
    print(f"saescope bf16 skipped: no native bf16 on this CPU (flags: {cpu_flags()}); --bf16 on")
    return False


def write(rows: list[dict], a: argparse.Namespace) -> str:
    import torch

    fp32 = next((r for r in rows if r["impl"] == "saescope fp32"), None)
    lines = [
        f"# End-to-end training benchmark (SmolLM2, {HOOK}), {date.today()}",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, {a.threads} threads; CPU flags: "
        f"{cpu_flags()}; Python {platform.python_version()}, torch {torch.__version__}. "
        f"{a.tokens:,} training tokens; command: `make bench-e2e`.",
        "",
        "| run | tokens/s | vs saescope fp32 | wall s | tokens / wall s | setting |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = f"{r['tokens_per_s'] / fp32['tokens_per_s']:.2f}x" if fp32 else "-"
        lines.append(
            f"| {r['impl']} | {r['tokens_per_s']:,.0f} | {vs} | {r['wall_s']:.1f} | "
            f"{r['tokens'] / r['wall_s']:,.0f} | {r['setting']} |"
        )
    text = "\n".join(lines) + "\n"
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, a.out)
    return text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16_384)
    p.add_argument("--d-sae", type=int, default=4608)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--peers-venv", type=Path, default=HERE / ".peers-venv")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", type=Path, default=HERE / "E2E.md")
    a = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("fp32", "bf16") if _bf16_ok(a) else ("fp32",):
            rows.append(_saescope(prec, a, Path(tmp) / prec))
            print(f"{rows[-1]['impl']}: {rows[-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
        if not a.no_peers and (got := _sparsify(a, Path(tmp))) is not None:
            rows.append(got)
    print(write(rows, a))


if __name__ == "__main__":
    main()
