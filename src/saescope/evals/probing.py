"""k-sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack"; as SAEBench runs it,
Karvonen et al. 2025): how well k SAE latents alone tell two classes of text apart, beside a
probe on the model's raw activations.

For each binary task: every context's activations at the hook and its SAE codes are averaged
over the context's positions (the first dropped: it has no left context); on the training
contexts the k latents with the largest difference between the two classes' mean codes are
chosen, a logistic regression is fitted on them alone, and its accuracy is measured on the
held-out contexts. The raw probe is a logistic regression on the whole averaged activation.

The tasks (`TASKS`) come from the default corpus: which work a context comes from (Milton vs
Shakespeare; Shakespeare's comedies vs his tragedies; his histories vs his comedies). Each
work's text is split by position: contexts from its first `train_share` go to training, from
the rest to the held-out set, so no test context overlaps a training one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from saescope.data.corpus import default_dir, text_files
from saescope.errors import InputError
from saescope.evals.linear import fit_logistic
from saescope.models.harvest import Harvester
from saescope.saes import SAE

KS = (1, 2, 5)
"""The numbers of latents SAEBench reports."""

MILTON = ("paradise_lost", "paradise_regained", "areopagitica")
COMEDIES = (
    "alls_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost", "measure_for",
    "merchant_of_venice", "merry_wives", "midsummer", "much_ado", "taming_of_the_shrew",
    "twelfth_night", "two_gentlemen",
)  # fmt: skip
TRAGEDIES = (
    "antony_and_cleopatra", "coriolanus", "hamlet", "julius_caesar", "lear", "macbeth",
    "othello", "romeo_and_juliet", "timon_of_athens", "tragedy_of_titus",
)  # fmt: skip
HISTORIES = ("henry_", "john_", "richard_ii")
SHAKESPEARE_PLAYS = COMEDIES + TRAGEDIES + HISTORIES
TASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "milton_vs_shakespeare": (MILTON, SHAKESPEARE_PLAYS),
    "comedy_vs_tragedy": (COMEDIES, TRAGEDIES),
    "history_vs_comedy": (HISTORIES, COMEDIES),
}
"""Binary tasks: (works of class 1, works of class 0), as prefixes of the corpus file names."""


@dataclass(frozen=True)
class ProbingConfig:
    """The sizes of the probing tasks."""

    n_train: int = 128
    """Training contexts per class."""
    n_test: int = 64
    """Held-out contexts per class."""
    context: int = 64
    """Tokens per context."""
    ks: tuple[int, ...] = KS
    """Numbers of latents of the sparse probes."""
    train_share: float = 0.8
    """The share of each work (by position) that training contexts come from."""
    seed: int = 0
    """Seed of the contexts drawn."""
    l2: float = 0.1
    """The probes' L2 penalty (see `linear.fit_logistic`)."""
    batch_size: int = 64
    """Contexts per forward pass."""

    def __post_init__(self) -> None:
        if self.n_train < 2 or self.n_test < 1 or self.context < 2 or not self.ks:
            raise InputError("probing needs n_train >= 2, n_test >= 1, context >= 2 and some ks")
        if min(self.ks) < 1:
            raise InputError(f"k must be at least 1, got {min(self.ks)}")


# ----- the probes, on any labelled rows ---------------------------------------------------------


def mean_difference(f: Tensor, y: Tensor) -> Tensor:
    """(d_sae,) |mean code of class 1 - mean code of class 0|, latent by latent."""
    y = y.bool()
    return (f[y].double().mean(0) - f[~y].double().mean(0)).abs()


def top_latents(f: Tensor, y: Tensor, k: int) -> Tensor:
    """The k latents whose mean codes differ most between the two classes (largest first)."""
    return mean_difference(f, y).topk(min(k, f.shape[1])).indices


def sparse_probe_accuracy(
    f_train: Tensor, y_train: Tensor, f_test: Tensor, y_test: Tensor, k: int, l2: float = 0.1
) -> float:
    """Held-out accuracy of a logistic regression on the k latents chosen by mean difference
    on the training rows."""
    idx = top_latents(f_train, y_train, k)
    probe = fit_logistic(f_train[:, idx], y_train, l2=l2)
    return probe.accuracy(f_test[:, idx], y_test)


def probe_accuracies(
    x: tuple[Tensor, Tensor],
    f: tuple[Tensor, Tensor],
    y: tuple[Tensor, Tensor],
    ks: Sequence[int] = KS,
    l2: float = 0.1,
) -> dict[str, Any]:
    """The raw probe's and each k-sparse SAE probe's held-out accuracy. x, f, y: (train,
    test) pairs of activations (n, d), codes (n, d_sae) and binary labels (n,)."""
    raw = fit_logistic(x[0], y[0], l2=l2).accuracy(x[1], y[1])
    sparse = {str(k): sparse_probe_accuracy(f[0], y[0], f[1], y[1], k, l2) for k in ks}
    return {"raw": raw, "sae": sparse, "n_train": int(y[0].numel()), "n_test": int(y[1].numel())}


# ----- labelled contexts from the corpus ----------------------------------------------------------


def _clean(text: str) -> str:
    """Trailing spaces cut from every line (one edition pads its lines: no probe should read
    that)."""
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(lines)


def _works(prefixes: Sequence[str], root: Path) -> list[Path]:
    out = [p for p in text_files([root]) if p.name.startswith(tuple(prefixes))]
    if not out:
        raise InputError(f"no works named {', '.join(prefixes)} in {root}; run `make corpus`")
    return out


def _windows(text: str, n: int, rng: random.Random, chars: int) -> list[str]:
    """n windows of `chars` characters from random places of text, each starting at a line."""
    starts = [m.end() for m in re.finditer("\n", text[: max(0, len(text) - chars)])]
    if not starts:
        return []
    return [text[s : s + chars] for s in (rng.choice(starts) for _ in range(n))]


def class_contexts(
    works: Sequence[Path], n: int, part: str, cfg: ProbingConfig, encode: Callable, rng: Any
) -> Tensor:
    """n contexts (n, cfg.context) of token ids from the works, taken in turn, from the first
    train_share of each work's text ("train") or the rest ("test"); the first 5% of a work
    (titles, the list of persons) is skipped."""
    texts = []
    for path in works:
        text = _clean(path.read_text(errors="replace"))
        a, b = int(0.05 * len(text)), int(cfg.train_share * len(text))
        texts.append(text[a:b] if part == "train" else text[b:])
    rows: list[list[int]] = []
    per = -(-n // len(texts))
    for text in texts:
        got: list[list[int]] = []
        for window in _windows(text, 4 * per, rng, 12 * cfg.context):
            ids = encode(window)[: cfg.context]
            if len(ids) == cfg.context and ids not in got:
                got.append(ids)
            if len(got) == per:
                break
        rows += got
    rng.shuffle(rows)
    if len(rows) < n:
        raise InputError(f"only {len(rows)} contexts of {cfg.context} tokens found; give fewer")
    return torch.tensor(rows[:n], dtype=torch.long)


def task_contexts(
    task: str, cfg: ProbingConfig, encode: Callable, root: Path | None = None
) -> dict[str, tuple[Tensor, Tensor]]:
    """{"train": (ids, labels), "test": (ids, labels)} of one task: n_train / n_test contexts
    of each class, labels 1 for the first class."""
    pos, neg = TASKS[task]
    root = root or default_dir()
    rng = random.Random(f"{cfg.seed}:{task}")
    out = {}
    for part, n in (("train", cfg.n_train), ("test", cfg.n_test)):
        one = class_contexts(_works(pos, root), n, part, cfg, encode, rng)
        zero = class_contexts(_works(neg, root), n, part, cfg, encode, rng)
        labels = torch.cat([torch.ones(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)])
        out[part] = (torch.cat([one, zero]), labels)
    return out


# ----- on a model and its SAEs --------------------------------------------------------------------


@torch.no_grad()
def pooled(
    model: nn.Module, hook: str, saes: dict[str, SAE], ids: Tensor, batch_size: int = 64
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per context: the hook's activations averaged over positions 1.. (n, d), and each SAE's
    codes of every position averaged the same way (n, d_sae)."""
    grab = Harvester(model, [hook])
    xs: list[Tensor] = []
    fs: dict[str, list[Tensor]] = {name: [] for name in saes}
    for i in range(0, ids.shape[0], batch_size):
        acts = grab(ids[i : i + batch_size])[hook][:, 1:].float()  # (B, T-1, d)
        xs.append(acts.mean(1))
        rows = acts.reshape(-1, acts.shape[-1])
        for name, sae in saes.items():
            f = sae.encode(rows.to(sae.W_dec.device)).cpu().float()
            fs[name].append(f.view(acts.shape[0], acts.shape[1], -1).mean(1))
    return torch.cat(xs), {n: torch.cat(v) for n, v in fs.items()}


def probing(
    model: nn.Module,
    tokenizer: Any,
    hook: str,
    saes: dict[str, SAE],
    cfg: ProbingConfig | None = None,
    tasks: Sequence[str] = tuple(TASKS),
    root: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """{sae name: {"tasks": {task: probe_accuracies}, "mean": {"raw": .., "sae_k": ..}}}: the
    k-sparse probes of every SAE of a run and the raw probe, on each task's held-out contexts
    (the model runs once per task for all the SAEs)."""
    cfg = cfg or ProbingConfig()
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise InputError(f"unknown probing task {unknown[0]!r}; known: {', '.join(TASKS)}")
    if not hasattr(tokenizer, "encode"):
        raise InputError("probing needs the model's tokenizer (a model run)")
    out: dict[str, dict[str, Any]] = {name: {"tasks": {}} for name in saes}
    was = {name: sae.training for name, sae in saes.items()}
    for sae in saes.values():
        sae.eval()
    try:
        for task in tasks:
            data = task_contexts(task, cfg, tokenizer.encode, root)
            x_tr, f_tr = pooled(model, hook, saes, data["train"][0], cfg.batch_size)
            x_te, f_te = pooled(model, hook, saes, data["test"][0], cfg.batch_size)
            y = (data["train"][1], data["test"][1])
            for name in saes:
                got = probe_accuracies((x_tr, x_te), (f_tr[name], f_te[name]), y, cfg.ks, cfg.l2)
                out[name]["tasks"][task] = got
    finally:
        for name, sae in saes.items():
            sae.train(was[name])
    for result in out.values():
        result["mean"] = _means(result["tasks"], cfg.ks)
    return out


def _means(tasks: dict[str, dict[str, Any]], ks: Sequence[int]) -> dict[str, float]:
    rows = list(tasks.values())
    mean = {"raw": sum(r["raw"] for r in rows) / len(rows)}
    for k in ks:
        mean[f"sae_{k}"] = sum(r["sae"][str(k)] for r in rows) / len(rows)
    return mean
