"""One CPU training step of the peer SAE libraries, timed through their own training code.

Runs under the peer venv, never saescope's (it does not import saescope):

    /tmp/peers/bin/python bench/peer_step.py --impl saelens-topk-default \\
        --d-in 512 --d-sae 8192 --k 32 --batch 4096 --warmup 2 --reps 5 --threads 2
    /tmp/peers/bin/python bench/peer_step.py --list

Prints one JSON line on stdout (the libraries' own prints go to stderr): impl, library,
version, setting (what was driven and how), median_s, tokens_per_s, rss_before_mb (current
RSS before the first step), peak_rss_mb, l0.

Each timed rep is one full step as the library's trainer runs it: forward, loss, backward,
optimiser step and the trainer's per-step bookkeeping (decoder-norm handling, dead-latent
counters, AuxK when latents are dead). fp32 on the CPU, one fixed batch x = randn(batch, d_in)
reused every step. The l0 is measured on one more, untimed step after the timed reps.

Where the trainer starts, no latent is dead yet (each library counts 1000 steps or 10M tokens
first), so AuxK is skipped. --dead-frac F makes the first F * d_sae latents dead, as later in
training: at setup their encoder weights are zeroed and their bias set to -1 (pre-activation -1
on every token, so they never fire) and the trainer's own dead-latent counters are set past its
threshold, so every step runs the library's AuxK.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

import torch

# Larger than any run here: total steps / samples handed to the trainers' LR schedules.
HUGE = 10**9
# Encoder bias of a dead latent (--dead-frac); its encoder weights are zeroed.
DEAD_BIAS = -1.0
# dictionary_learning step index for timed steps: past its LR warm-up (1000), sparsity warm-up
# (2000) and threshold start (1000), so the steady-state per-step work runs.
STEADY_STEP = 10_000


class Runner(ABC):
    """One library's training step on a fixed batch."""

    library: str
    dist: str
    setting: str

    @abstractmethod
    def step(self, measure: bool = False) -> float | None:
        """One training step; with measure, return that step's mean active latents per token."""


def _n_dead(a: argparse.Namespace) -> int:
    return round(a.dead_frac * a.d_sae)


def _kill(
    w_rows: torch.Tensor, bias: torch.Tensor, counter: torch.Tensor, n_dead: int, past: int
) -> None:
    """Make the first n_dead latents dead: never firing, and counted dead by the trainer.

    w_rows is the encoder weight with one row per latent (a view; zeroed in place).
    """
    with torch.no_grad():
        w_rows[:n_dead] = 0.0
        bias[:n_dead] = DEAD_BIAS
        counter[:n_dead] = past


def _dead_note(n_dead: int, d_sae: int) -> str:
    if n_dead == 0:
        return "0 dead latents (fresh trainer), so AuxK is skipped"
    return (
        f"{n_dead}/{d_sae} latents dead (encoder weights 0, bias {DEAD_BIAS:g}, trainer "
        f"counters past its threshold), so AuxK runs every step"
    )


def _bias_for_l0(pre: torch.Tensor, l0: float) -> torch.Tensor:
    """Per-latent shift putting each latent's threshold at its (1 - l0/d_sae) batch quantile."""
    n, d_sae = pre.shape
    m = min(max(round(n * l0 / d_sae), 1), n - 1)
    return -pre.kthvalue(n - m, dim=0).values


def _active_per_token(acts: torch.Tensor) -> float:
    if acts.is_sparse:
        acts = acts.to_dense()
    return float((acts != 0).sum(-1).float().mean())


# ---------------------------------------------------------------- SAELens


def _saelens_topk_sae(a: argparse.Namespace, fast: bool) -> tuple[Any, str]:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    extra = {"use_sparse_activations": True, "rescale_acts_by_decoder_norm": False} if fast else {}
    cfg = TopKTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae, k=a.k, device="cpu", **extra)
    flags = (
        f"use_sparse_activations={cfg.use_sparse_activations}, "
        f"rescale_acts_by_decoder_norm={cfg.rescale_acts_by_decoder_norm}"
    )
    note = (
        "fastest CPU flags (sparse COO activations + torch.sparse.mm decode, per the "
        "TopKTrainingSAEConfig docstring; no decoder-norm rescale)"
        if fast
        else "library defaults"
    )
    setting = (
        f"TopKTrainingSAE, {note}: k={a.k}, {flags}, "
        f"aux_loss_coefficient={cfg.aux_loss_coefficient}, "
        f"apply_b_dec_to_input={cfg.apply_b_dec_to_input}, "
        f"decoder_init_norm={cfg.decoder_init_norm}"
    )
    return TopKTrainingSAE(cfg), setting


def _saelens_standard_sae(a: argparse.Namespace, x: torch.Tensor) -> tuple[Any, str]:
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    cfg = StandardTrainingSAEConfig(d_in=a.d_in, d_sae=a.d_sae, device="cpu", l1_coefficient=5.0)
    sae = StandardTrainingSAE(cfg)
    with torch.no_grad():
        _, pre = sae.encode_with_hidden_pre(x)
        sae.b_enc.add_(_bias_for_l0(pre, a.l0))
    setting = (
        f"StandardTrainingSAE (ReLU + decoder-norm-weighted L1), defaults with "
        f"l1_coefficient={cfg.l1_coefficient}, l1_warm_up_steps={cfg.l1_warm_up_steps}, "
        f"apply_b_dec_to_input={cfg.apply_b_dec_to_input}; b_enc set so ~{a.l0:g} latents "
        f"fire per token on x"
    )
    return sae, setting


class SaeLensRunner(Runner):
    """sae_lens.training.sae_trainer.SAETrainer.step(x), as its fit() loop calls it."""

    library = "sae-lens"
    dist = "sae-lens"

    def __init__(
        self, a: argparse.Namespace, x: torch.Tensor, arch: str, autocast: bool = False
    ) -> None:
        from sae_lens.config import SAETrainerConfig
        from sae_lens.training.sae_trainer import SAETrainer

        torch.manual_seed(a.seed)
        if arch == "standard":
            sae, sae_setting = _saelens_standard_sae(a, x)
        else:
            sae, sae_setting = _saelens_topk_sae(a, fast=arch == "topk-fast")
        cfg = SAETrainerConfig(
            total_training_samples=HUGE,
            train_batch_size_samples=a.batch,
            lr=a.lr,
            lr_end=a.lr / 10,
            device="cpu",
            autocast=autocast,
        )
        self.trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
        self.x = x
        self.n_dead = _n_dead(a) if arch != "standard" else 0
        counter = self.trainer.n_forward_passes_since_fired
        _kill(sae.W_enc.T, sae.b_enc, counter, self.n_dead, cfg.dead_feature_window + 1)
        aux = f"; {_dead_note(self.n_dead, a.d_sae)}" if arch != "standard" else ""
        self.setting = (
            f"SAETrainer.step(x) [+ maybe_reset_sparsity, n_training_steps += 1, as fit() does; "
            f"wandb off]; {sae_setting}; Adam lr={a.lr:g} constant, betas "
            f"({cfg.adam_beta1}, {cfg.adam_beta2}), clip_grad_norm 1.0, "
            f"{'autocast bf16 (SAETrainerConfig.autocast=True)' if autocast else 'autocast off'}, "
            f"dead_feature_window={cfg.dead_feature_window}{aux}"
        )

    def step(self, measure: bool = False) -> float | None:
        self.trainer.maybe_reset_sparsity()
        out = self.trainer.step(self.x)
        self.trainer.n_training_steps += 1
        return _active_per_token(out.feature_acts) if measure else None


# ---------------------------------------------------------------- sparsify


def _import_sparsify() -> Any:
    # Triton is installed here, so sparsify would pick its GPU-only Triton decoder; this is
    # sparsify's own switch to its eager (embedding_bag) decoder.
    os.environ["SPARSIFY_DISABLE_TRITON"] = "1"
    import sparsify

    return sparsify


def _sparsify_optimizers(sae: Any, cfg: Any) -> tuple[list[Any], list[Any]]:
    """The optimiser (and LR schedule) sparsify.Trainer.__init__ builds for cfg.optimizer."""
    if cfg.optimizer == "signum":
        from schedulefree import ScheduleFreeWrapper
        from sparsify.sign_sgd import SignSGD

        opt = ScheduleFreeWrapper(
            SignSGD([{"params": sae.parameters(), "lr": cfg.lr}]), momentum=0.95
        )
        opt.train()
        return [opt], []
    if cfg.optimizer == "adam":
        from transformers import get_linear_schedule_with_warmup

        adam = torch.optim.Adam([{"params": sae.parameters(), "lr": cfg.lr}])
        return [adam], [get_linear_schedule_with_warmup(adam, cfg.lr_warmup_steps, HUGE)]
    raise ValueError(f"optimizer {cfg.optimizer!r} not driven here")


class SparsifyRunner(Runner):
    """sparsify.SparseCoder.forward + the per-step work of sparsify.Trainer.fit (fvu loss).

    Trainer.fit itself needs a Hugging Face model and runs the step inside a forward hook on
    it, so it cannot be handed a batch; this replays its per-step calls on the SparseCoder.
    """

    library = "eai-sparsify"
    dist = "eai-sparsify"

    def __init__(
        self, a: argparse.Namespace, x: torch.Tensor, optimizer: str, auxk_alpha: float = 0.0
    ) -> None:
        sparsify = _import_sparsify()
        self.cfg = sparsify.TrainConfig(
            sae=sparsify.SparseCoderConfig(num_latents=a.d_sae, k=a.k),
            optimizer=optimizer,
            lr=a.lr,
            auxk_alpha=auxk_alpha,
            log_to_wandb=False,
        )
        torch.manual_seed(a.seed)
        self.sae = sparsify.SparseCoder(a.d_in, self.cfg.sae, "cpu", dtype=torch.float32)
        with torch.no_grad():  # Trainer's global_step == 0 init: b_dec = batch mean
            self.sae.b_dec.data = x.mean(0)
        self.optimizers, self.schedulers = _sparsify_optimizers(self.sae, self.cfg)
        self.since_fired = torch.zeros(a.d_sae, dtype=torch.long)
        self.did_fire = torch.zeros(a.d_sae, dtype=torch.bool)
        self.x = x
        self.n_dead = _n_dead(a) if self.cfg.auxk_alpha > 0 else 0
        past = self.cfg.dead_feature_threshold + 1
        _kill(self.sae.encoder.weight, self.sae.encoder.bias, self.since_fired, self.n_dead, past)
        self.setting = self._describe(a)

    def _describe(self, a: argparse.Namespace) -> str:
        s, c = self.cfg.sae, self.cfg
        opt = (
            "ScheduleFreeWrapper(SignSGD, momentum=0.95)"
            if c.optimizer == "signum"
            else (f"torch Adam (bitsandbytes absent) + linear warm-up {c.lr_warmup_steps} steps")
        )
        aux = (
            "auxk_alpha=0 (library default): no dead mask, AuxK never computed"
            if c.auxk_alpha == 0
            else f"auxk_alpha={c.auxk_alpha:g}, "
            f"dead_feature_threshold={c.dead_feature_threshold} tokens: "
            f"{_dead_note(self.n_dead, a.d_sae)}; sparsify's FusedEncoder.backward ignores "
            f"the pre_acts gradient, so AuxK trains W_dec only"
        )
        return (
            f"SparseCoder.forward(x, y=x, dead_mask, total_variance) + Trainer.fit's per-step "
            f"calls (set_decoder_norm_to_unit_norm before, "
            f"remove_gradient_parallel_to_decoder_directions after backward, did_fire / "
            f"num_tokens_since_fired update); loss = fvu + auxk_alpha*auxk + multi_topk_fvu/8; "
            f"SparseCoderConfig: activation={s.activation}, k={s.k}, num_latents={a.d_sae}, "
            f"normalize_decoder={s.normalize_decoder}, multi_topk={s.multi_topk}, "
            f"skip_connection={s.skip_connection}; optimizer={c.optimizer}: {opt}, lr={c.lr:g}; "
            f"{aux}; eager decoder (SPARSIFY_DISABLE_TRITON=1: Triton kernels are GPU-only); "
            f"fp32 matmul precision left at 'highest' (fit() sets 'high' = TF32 for oneDNN); "
            f"LM-hook token masking / activation copies not included"
        )

    def _forward(self) -> Any:
        cfg, x = self.cfg, self.x
        self.sae.set_decoder_norm_to_unit_norm()  # normalize_decoder and not transcode
        dead_mask = (self.since_fired > cfg.dead_feature_threshold) if cfg.auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = self.sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        self.did_fire[out.latent_indices.flatten()] = True
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.div(cfg.grad_acc_steps * cfg.micro_acc_steps).backward()
        return out

    def step(self, measure: bool = False) -> float | None:
        out = self._forward()
        self.sae.remove_gradient_parallel_to_decoder_directions()
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad()
        for sched in self.schedulers:
            sched.step()
        with torch.no_grad():
            self.since_fired += self.x.shape[0]
            self.since_fired[self.did_fire] = 0
            self.did_fire.zero_()
        return float((out.latent_acts > 0).sum(-1).float().mean()) if measure else None


# ---------------------------------------------------------------- dictionary_learning


def _dictlearn_trainer(a: argparse.Namespace, kind: str) -> Any:
    from dictionary_learning.trainers import BatchTopKTrainer, StandardTrainer, TopKTrainer

    common: dict[str, Any] = {
        "steps": HUGE,
        "activation_dim": a.d_in,
        "dict_size": a.d_sae,
        "layer": 0,
        "lm_name": "none",
        "lr": a.lr,
        "seed": a.seed,
        "device": "cpu",
    }
    if kind == "standard":
        return StandardTrainer(**common)
    cls = TopKTrainer if kind == "topk" else BatchTopKTrainer
    return cls(k=a.k, **common)


def _dictlearn_setting(a: argparse.Namespace, kind: str, tr: Any, n_dead: int) -> str:
    head = f"{type(tr).__name__}.update(step, x), defaults but lr={a.lr:g}, steps={HUGE}"
    sched = f"LR warm-up {tr.warmup_steps} steps (LambdaLR)"
    if kind == "standard":
        return (
            f"{head}; AutoEncoder (ReLU + L1), ConstrainedAdam (decoder grad projection + "
            f"unit-norm renorm per step), l1_penalty={tr.l1_penalty}, {sched}, "
            f"sparsity warm-up {tr.sparsity_warmup_steps} steps, resample_steps=None; timed "
            f"steps use step index >= {STEADY_STEP}; encoder bias set so ~{a.l0:g} latents "
            f"fire per token on x"
        )
    return (
        f"{head}; {type(tr.ae).__name__} k={a.k}, Adam, auxk_alpha={tr.auxk_alpha:g}, {sched}, "
        f"remove_gradient_parallel_to_decoder_directions + clip_grad_norm 1.0 + decoder "
        f"renorm per step; step 0 (geometric-median b_dec init) run untimed at setup, timed "
        f"steps use step index >= {STEADY_STEP} (> threshold_start_step, so the threshold EMA "
        f"update runs); dead_feature_threshold={tr.dead_feature_threshold} tokens: "
        f"{_dead_note(n_dead, a.d_sae)}"
    )


class DictLearnRunner(Runner):
    """dictionary_learning's trainer.update(step, x), as its trainSAE loop calls it."""

    library = "dictionary-learning"
    dist = "dictionary-learning"

    def __init__(self, a: argparse.Namespace, x: torch.Tensor, kind: str) -> None:
        self.trainer = tr = _dictlearn_trainer(a, kind)
        self.x = x
        self.n_dead = _n_dead(a) if kind != "standard" else 0
        if kind == "standard":
            with torch.no_grad():
                tr.ae.encoder.bias.add_(_bias_for_l0(tr.ae.encoder(x - tr.ae.bias), a.l0))
        else:
            tr.update(0, x)
            past = tr.dead_feature_threshold
            _kill(
                tr.ae.encoder.weight,
                tr.ae.encoder.bias,
                tr.num_tokens_since_fired,
                self.n_dead,
                past,
            )
        self.idx = STEADY_STEP
        self.setting = _dictlearn_setting(a, kind, self.trainer, self.n_dead)

    def step(self, measure: bool = False) -> float | None:
        counts: list[float] = []

        def hook(_mod: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if not counts:  # the first decoder call of the step is the reconstruction
                counts.append(_active_per_token(inputs[0]))

        handle = self.trainer.ae.decoder.register_forward_pre_hook(hook) if measure else None
        try:
            self.trainer.update(self.idx, self.x)
        finally:
            if handle is not None:
                handle.remove()
        self.idx += 1
        return counts[0] if measure else None


# ---------------------------------------------------------------- driver

IMPLS: dict[str, Callable[[argparse.Namespace, torch.Tensor], Runner]] = {
    "saelens-topk-default": lambda a, x: SaeLensRunner(a, x, "topk"),
    "saelens-topk-fast": lambda a, x: SaeLensRunner(a, x, "topk-fast"),
    "saelens-topk-fast-bf16": lambda a, x: SaeLensRunner(a, x, "topk-fast", autocast=True),
    "saelens-standard": lambda a, x: SaeLensRunner(a, x, "standard"),
    "sparsify-default": lambda a, x: SparsifyRunner(a, x, "signum"),
    "sparsify-adam": lambda a, x: SparsifyRunner(a, x, "adam"),
    "sparsify-auxk": lambda a, x: SparsifyRunner(a, x, "signum", auxk_alpha=1 / 32),
    "dictlearn-topk": lambda a, x: DictLearnRunner(a, x, "topk"),
    "dictlearn-batchtopk": lambda a, x: DictLearnRunner(a, x, "batchtopk"),
    "dictlearn-standard": lambda a, x: DictLearnRunner(a, x, "standard"),
}


def rss_mb() -> float:
    """Current resident set size (MB), from /proc."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _time_steps(runner: Runner, warmup: int, reps: int) -> tuple[list[float], float]:
    for _ in range(warmup):
        runner.step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        runner.step()
        times.append(time.perf_counter() - t)
    l0 = runner.step(measure=True)
    assert l0 is not None
    return times, l0


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=sorted(IMPLS))
    p.add_argument("--list", action="store_true", help="print the impl names and exit")
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--l0", type=float, default=32.0, help="target l0 for the ReLU-L1 SAEs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument(
        "--dead-frac",
        type=float,
        default=0.0,
        help="fraction of latents made dead so the TopK trainers run AuxK",
    )
    a = p.parse_args()
    if not a.list and a.impl is None:
        p.error("--impl is required unless --list")
    return a


def _run(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(a.threads)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    x = torch.randn(a.batch, a.d_in, generator=torch.Generator().manual_seed(a.seed))
    runner = IMPLS[a.impl](a, x)
    rss_before = rss_mb()
    times, l0 = _time_steps(runner, a.warmup, a.reps)
    median = statistics.median(times)
    return {
        "impl": a.impl,
        "library": runner.library,
        "version": version(runner.dist),
        "setting": runner.setting,
        "median_s": median,
        "tokens_per_s": a.batch / median,
        "rss_before_mb": rss_before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "l0": l0,
    }


def main() -> None:
    a = _parse()
    if a.list:
        print("\n".join(IMPLS))
        return
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # the libraries print progress to stdout
        result = _run(a)
    print(json.dumps(result), file=stdout)


if __name__ == "__main__":
    main()
