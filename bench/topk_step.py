"""TopK SAE training-step cost: the dense autograd path vs saescope's sparse path
(`saescope.sparse`), side by side in one run, against the roofline (the bare encoder matmul,
the only dense work a TopK step needs).

    .venv/bin/python bench/topk_step.py [--d-in 512 --d-sae 8192 --k 32 --batch 4096]

Times loss forward + backward (no optimiser), fp32, median of --reps after one warm-up, and
writes bench/topk_step.md. The peer-library comparison of issue 4 is not here yet.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

from saescope.saes import make_sae
from saescope.sparse import topk_sae_forward_sparse


def _median_seconds(fn: Callable[[], None], reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("topk_step.md"))
    a = p.parse_args()

    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": a.d_in, "d_sae": a.d_sae, "k": a.k})
    x = torch.randn(a.batch, a.d_in)

    def dense() -> None:
        sae.zero_grad(set_to_none=True)
        out = sae.loss(x, x)
        out.total.backward()

    def sparse() -> None:
        sae.zero_grad(set_to_none=True)
        fwd = topk_sae_forward_sparse(sae, x)
        (fwd.y_hat - x).pow(2).sum(-1).mean().backward()

    def roofline() -> None:
        torch.addmm(sae.b_enc.detach(), x, sae.W_enc.detach())

    with torch.no_grad():
        err = (sae(x) - topk_sae_forward_sparse(sae, x).y_hat).abs().max().item()
    rows = {
        name: _median_seconds(fn, a.reps)
        for name, fn in (
            ("dense autograd", dense),
            ("sparse path", sparse),
            ("encoder matmul", roofline),
        )
    }
    roof = rows["encoder matmul"]
    lines = [
        f"# TopK training step, {date.today()}",
        "",
        f"d_in {a.d_in}, d_sae {a.d_sae}, k {a.k}, batch {a.batch}, fp32, loss forward + "
        f"backward, median of {a.reps}; torch {torch.__version__}, {torch.get_num_threads()} "
        f"threads, {platform.processor() or platform.machine()}. Max |dense - sparse| output "
        f"difference: {err:.2e}.",
        "",
        "| path | seconds | tokens/s | share of roofline |",
        "|---|---|---|---|",
    ]
    for name, s in rows.items():
        lines.append(f"| {name} | {s:.4f} | {a.batch / s:,.0f} | {roof / s:.0%} |")
    text = "\n".join(lines) + "\n"
    a.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
