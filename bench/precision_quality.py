"""bf16 against fp32, quality (issue 19): on glassllm's layer 2, SAEs trained in each precision
on the same activations, seed and steps (explained variance, CE loss recovered, dead fraction,
L0), the share of tokens whose active set the bf16 product changes, the clean CE of the model
in bf16 and fp32, and ground-truth recovery on a hidden-feature task; prints Markdown for
docs/PRECISION.md with the CPU flags.

    .venv/bin/python bench/precision_quality.py [--steps N] [--seeds 0 1 2]

Where the CPU has no native bf16 the SAE step's bf16 product is emulated (bf16-rounded inputs,
float32 sums, bf16-rounded result: `saescope.lowp`), and the model's bf16 forward is torch's
own autocast (slow there, but the same arithmetic).
"""

from __future__ import annotations

import argparse
import warnings

import torch
from machine import cpu_flags, cpu_name  # bench/machine.py: this file runs as a script

from saescope import lowp, precision
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.evaluate import evaluate_in_model
from saescope.models import load_model
from saescope.models.downstream import model_logits
from saescope.models.harvest import harvest
from saescope.runs import DataSpec
from saescope.saes import make_sae
from saescope.training import TrainConfig, train

HOOK = "layers.2"
ARCHS = {
    "topk": {"k": 16},
    "batchtopk": {"k": 16},
    "relu": {"l1_coef": 2.0},
    "jumprelu": {"l0_coef": 0.3},
}


def glass_rows(a: argparse.Namespace, model, data: DataSpec) -> list[str]:
    ctx = data.contexts("train")[: a.contexts]
    x = torch.cat([b[HOOK] for b in harvest(model, ctx, [HOOK], batch_size=32)])
    held = data.contexts("test")[:32]
    batches = [x[i : i + 1024] for i in range(0, x.shape[0] - 1023, 1024)]
    rows = []
    for arch, extra in ARCHS.items():
        for seed in a.seeds:
            got, saes = {}, {}
            for prec in ("fp32", "bf16"):
                torch.manual_seed(seed)
                sae = make_sae({"architecture": arch, "d_in": x.shape[1], "d_sae": 1024, **extra})
                stream = [batches[i % len(batches)] for i in range(a.steps)]
                cfg = TrainConfig(
                    steps=a.steps, lr=0.004, progress=False, precision=prec, seed=seed
                )
                saes[prec] = train(sae, stream, cfg).saes[0]
                got[prec] = evaluate_in_model(
                    saes[prec], model, held, HOOK, max_tokens=4096, batch_size=8
                )
            differ = _differ(saes["fp32"], x[:8192])
            f, b = got["fp32"], got["bf16"]
            rows.append(
                f"| {arch} | {seed} | {f['explained_variance']:.4f} | "
                f"{b['explained_variance']:.4f} | {f['ce_loss_recovered']:.4f} | "
                f"{b['ce_loss_recovered']:.4f} | "
                f"{f['dead_fraction']:.3f} / {b['dead_fraction']:.3f} | {f['l0']:.1f} / "
                f"{b['l0']:.1f} | {differ:.2%} |"
            )
            print(rows[-1], flush=True)
    return rows


def _differ(sae, x: torch.Tensor) -> float:
    """Share of tokens whose active set differs between the fp32 and bf16 products."""
    sets = []
    for prec in ("fp32", "bf16"):
        sae.precision = prec
        with torch.no_grad():
            sets.append(sae.encode(x) != 0)
    sae.precision = "fp32"
    return float((sets[0] != sets[1]).any(dim=1).float().mean())


def clean_ce(model, data: DataSpec, n: int) -> tuple[float, float]:
    ids = data.contexts("test")[:n]

    def ce() -> float:
        with torch.no_grad():
            logits = model_logits(model, ids)[:, :-1].float()
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()))

    fp32 = ce()
    with precision.model_precision("bf16"):
        return fp32, ce()


def recovery(seeds: list[int]) -> list[str]:
    rows = []
    for seed in seeds:
        task = ArticleTask(ArticleTaskConfig(d_in=32, n_features=48, feature_seed=seed), 1024)
        got = {}
        for prec in ("fp32", "bf16"):
            torch.manual_seed(seed)
            sae = make_sae({"architecture": "topk", "d_in": 32, "d_sae": 64, "k": 2})
            cfg = TrainConfig(steps=1000, lr_decay_start=0.5, progress=False, precision=prec)
            dec = torch.nn.functional.normalize(train(sae, task, cfg).saes[0].W_dec.detach(), dim=1)
            got[prec] = (task.features @ dec.T).max(dim=1).values
        rows.append(
            f"| {seed} | {int((got['fp32'] >= 0.99).sum())} / 48 | "
            f"{int((got['bf16'] >= 0.99).sum())} / 48 | {float(got['fp32'].min()):.4f} | "
            f"{float(got['bf16'].min()):.4f} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--contexts", type=int, default=256, help="training contexts of 128 tokens")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ce-contexts", type=int, default=16)
    a = p.parse_args()
    warnings.simplefilter("ignore", precision.SlowPrecisionWarning)
    model, _ = load_model("glassllm")
    data = DataSpec.for_model("glassllm", HOOK)
    native = "native" if lowp.native_matmul("cpu") else "emulated (no native bf16)"
    print(f"CPU: {cpu_name()}; flags: {cpu_flags()}; bf16 SAE product: {native}\n")
    print("| arch | seed | EV fp32 | EV bf16 | CE rec. fp32 | CE rec. bf16 | dead fp32 / bf16 "
          "| L0 fp32 / bf16 | tokens whose set differs |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    glass_rows(a, model, data)
    fp32, bf16 = clean_ce(model, data, a.ce_contexts)
    print(f"\nclean CE on {a.ce_contexts} x 128 held-out tokens: fp32 {fp32:.4f}, bf16 {bf16:.4f} "
          f"(difference {bf16 - fp32:+.4f} nats)\n")  # fmt: skip
    print("| seed | features >= 0.99 fp32 | bf16 | min cosine fp32 | bf16 |")
    print("|---|---|---|---|---|")
    recovery(a.seeds)


if __name__ == "__main__":
    main()
