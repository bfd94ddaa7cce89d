"""The tables of docs/SCALING.md, from `saescope.parallel.plan` (nothing measured here: the
model; bench/distributed.py checks its communication against gloo runs).

    python bench/scaling_plan.py > /tmp/tables.md   # then paste into docs/SCALING.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from saescope.parallel import plan

LLAMA = {"layers": 32, "d_model": 4096, "params": 8.03e9}
MODEL_FLOPS = 2 * LLAMA["params"]  # the forward's FLOPs per token (harvest on the fly)
MODEL_BYTES = 2 * LLAMA["params"]  # its bf16 weights on every rank that harvests
K = 64


def row(name: str, p: plan.StepPlan, cluster: plan.Cluster, tokens: int, passes: int = 1) -> str:
    """One plan's line; tokens/s through every SAE (`passes` runs over the same tokens), with
    compute, Adam and communication one after the other (no overlap: a lower bound)."""
    t = p.times(cluster)
    serial = sum(t.values())
    fits = "yes" if p.fits(cluster) else "**no**"
    rate = f"{tokens / serial / passes:,.0f}" if p.fits(cluster) else "-"
    return (
        f"| {name} | {p.ranks} | {p.state / 1e9:,.1f} | {p.transient / 1e9:,.1f} | {fits} | "
        f"{p.flops / 1e12:,.1f} | {p.wire / 1e9:,.3f} | {1e3 * t['compute']:,.1f} | "
        f"{1e3 * t['adam']:,.1f} | {1e3 * t['comm']:,.1f} | {p.limit(cluster)} | {passes} | "
        f"{rate} |"
    )


HEAD = [
    "| plan | GPUs | state GB/GPU | transient GB/GPU | fits 80 GB | TFLOP/GPU/step | "
    "sent GB/GPU/step | compute ms | Adam ms | comm ms | limit | passes | tokens/s |",
    "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|",
]


def llama(tokens: int) -> list[str]:
    """(a) every layer of a Llama-3-8B-sized model, 131,072-latent SAEs, one node of 8."""
    sae = plan.SAESize(LLAMA["d_model"], 131072, K)
    c, layers = plan.Cluster(gpus=8), LLAMA["layers"]
    m = MODEL_FLOPS
    rows = [  # name, plan, passes over the tokens
        ("ddp, all 32 SAEs at once", plan.ddp(sae, tokens, 8, layers, m), 1),
        ("ddp, 4 SAEs per pass", plan.ddp(sae, tokens, 8, 4, m), 8),
        ("ddp, 2 SAEs per pass", plan.ddp(sae, tokens, 8, 2, m), 16),
        ("ddp, 1 SAE per pass", plan.ddp(sae, tokens, 8, 1, m), 32),
        ("layers, 4 SAEs per GPU", plan.layers(sae, tokens, 8, layers, m), 1),
        ("layers, 2 SAEs per GPU per pass", plan.layers(sae, tokens, 8, 16, m), 2),
        ("latents, 32 SAEs each over 8", plan.latents(sae, tokens, 8, m, saes=layers), 1),
        ("latents, 16 SAEs per pass", plan.latents(sae, tokens, 8, m, saes=16), 2),
    ]
    out = [row(n, plan.with_model(p, MODEL_BYTES), c, tokens, k) for n, p, k in rows]
    two = plan.with_model(plan.layers(sae, tokens, 16, layers, m), MODEL_BYTES)
    return [
        *out,
        row("layers over 2 nodes (16 GPUs), 2 SAEs per GPU", two, plan.Cluster(16), tokens),
    ]


def anthropic(tokens: int) -> list[str]:
    """(b) one 34M-latent SAE (33,554,432 = 2^25) on d_model 4096, from a cache (no model)."""
    sae = plan.SAESize(4096, 2**25, K)
    out = []
    for gpus in (64, 1000):
        c = plan.Cluster(gpus=gpus)
        rows = [
            (f"ddp over {gpus}", plan.ddp(sae, tokens, gpus)),
            (f"latents over {gpus}", plan.latents(sae, tokens, gpus, shared_input=False)),
            (
                f"latents over {gpus}, butterfly top-k (not in saescope)",
                plan.latents(sae, tokens, gpus, shared_input=False, butterfly=True),
            ),
        ]
        for group in (8, 64, 125, 250, 500):
            if gpus % group == 0 and group < gpus:
                replicas = gpus // group
                name = f"latents {group} x ddp {replicas} (not in saescope)"
                rows.append((name, plan.latents_x_ddp(sae, tokens, group, replicas)))
        out += [row(n, p, c, tokens) for n, p in rows]
    return out


def check() -> list[str]:
    """The ddp formula at bench/distributed.py's size, for the measured bytes."""
    sae = plan.SAESize(512, 8192, K)
    model = plan.ddp_collectives(sae, 2)
    lines = ["| collective | bytes given | bytes sent (2 ranks) |", "|---|---:|---:|"]
    lines += [f"| {c.kind} ({c.collective}) | {c.nbytes:,} | {c.wire():,.0f} |" for c in model]
    total = sum(c.nbytes for c in model), sum(c.wire() for c in model)
    return [*lines, f"| total | {total[0]:,} | {total[1]:,.0f} |"]


def main() -> None:
    sizes = plan.SAESize(4096, 131072, K), plan.SAESize(4096, 2**25, K)
    for s in sizes:
        print(
            f"SAE d_in {s.d_in}, d_sae {s.d_sae:,}: {s.params:,} parameters, "
            f"{s.params * plan.STATE_BYTES / 1e9:,.1f} GB of state; "
            f"{s.flops_per_token() / 1e9:,.2f} GFLOP/token sparse, "
            f"{s.flops_per_token(sparse=False) / 1e9:,.2f} dense"
        )
    per_gpu = 60e9  # of state, leaving room for activations
    most = int((8 * per_gpu / plan.STATE_BYTES - 4096) // (2 * 4096 + 1))
    print(f"Largest d_sae (d_in 4096) whose state fits 8 GPUs at 60 GB each: {most:,}")
    for tokens in (4096, 65536):
        print(f"\n### (a) Llama-3-8B-sized, 32 layers, 8 GPUs, {tokens:,} tokens/step\n")
        print("\n".join(HEAD + llama(tokens)))
    for tokens in (4096, 65536):
        print(f"\n### (b) 34M latents, d_model 4096, {tokens:,} tokens/step\n")
        print("\n".join(HEAD + anthropic(tokens)))
    print("\n### The ddp formula at the benchmark's size (d_in 512, d_sae 8192)\n")
    print("\n".join(check()))


if __name__ == "__main__":
    main()
