"""First-letter feature absorption (Chanin et al. 2024, "A is for Absorption"), as SAEBench
measures it (Karvonen et al. 2025).

A linear probe reads a word token's first letter from the model's activation at the hook (the
ground truth). For each letter, the SAE's "main" latents for it are found by k-sparse probing
(latents ranked by mean difference; k grows while one more latent raises the sparse probe's F1
by more than `f1_jump`). Then, on held-out words the probe gets right:

- full absorption: every main latent is silent, yet the latent with the largest projection on
  the probe direction (activation x decoder-row cosine with the probe) is aligned with the probe
  (cosine >= `cos_threshold`) and carries at least `projection_share` of the activation's own
  projection on the probe: another latent has absorbed the letter;
- absorption fraction: the share of the probe projection carried by up to `max_absorbers`
  other probe-aligned latents (cosine >= `fraction_cos_threshold`) instead of the main ones
  (0 when the main latents carry it all, 1 when they carry none), counting partial absorption.

The absorption rate of a letter is the fraction of its probe-true-positive words fully
absorbed; the suite reports it per letter and its mean over letters (with at least
`min_positives` such words), and the mean absorption fraction beside it.

`absorption_scores` and `labelled_absorption` work on any labelled activations (the tests use
the hierarchical ground-truth task, where the absorbing latent is known); `first_letter`
builds the words and prompts from a tokenizer.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import InputError
from saescope.evals.linear import Probe, f1, fit_logistic
from saescope.models.harvest import Harvester
from saescope.saes import SAE

EPS = 1e-8
LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORD = re.compile(r"^ [A-Za-z]{2,}$")
"""A whole-word token: a leading space, then two or more letters."""


@dataclass(frozen=True)
class AbsorptionConfig:
    """The words, prompts and thresholds (SAEBench's defaults where it has one)."""

    n_words: int = 1500
    """Whole-word tokens drawn from the vocabulary (all of them when fewer)."""
    test_share: float = 0.2
    """Share of the words held out (the probe and the main latents are fitted on the rest)."""
    n_icl: int = 3
    """Examples "<word> has the first letter: <L>" before each word, so the model spells."""
    max_k: int = 10
    """Most main latents per letter."""
    f1_jump: float = 0.03
    """k grows while one more latent raises the sparse probe's F1 by more than this."""
    cos_threshold: float = 0.025
    """Full absorption: the top projecting latent's decoder cosine with the probe."""
    fraction_cos_threshold: float = 0.1
    """Absorption fraction: the decoder cosine with the probe of a latent that may absorb."""
    projection_share: float = 0.4
    """The absorbing latents' least share of the activation's projection on the probe."""
    max_absorbers: int = 3
    """Absorption fraction: the most latents that together absorb."""
    min_positives: int = 3
    """Letters with fewer held-out probe true positives are left out of the mean."""
    seed: int = 0
    """Seed of the words drawn and of the examples."""
    l2: float = 1e-3
    """The probes' L2 penalty."""
    batch_size: int = 32
    """Prompts per forward pass."""

    def __post_init__(self) -> None:
        if self.n_words < 10 or not 0 < self.test_share < 1 or self.max_k < 1:
            raise InputError("absorption needs n_words >= 10, 0 < test_share < 1, max_k >= 1")


def main_latents(
    f: Tensor, y: Tensor, max_k: int = 10, jump: float = 0.03, l2: float = 1e-3
) -> list[int]:
    """The main latents of the positive class of binary labels y (n,) from codes f (n, d_sae):
    latents ranked by (mean code on positives - mean on the rest); k grows from 1 while the
    training F1 of a logistic regression on the top k rises by more than `jump`."""
    y = y.bool()
    diff = f[y].double().mean(0) - f[~y].double().mean(0)
    order = diff.topk(min(max_k, f.shape[1])).indices
    scores = []
    for k in range(1, order.numel() + 1):
        cols = f[:, order[:k]]
        scores.append(f1(fit_logistic(cols, y.long(), l2=l2).predict(cols), y))
        if k > 1 and scores[-1] - scores[-2] <= jump:
            return order[: k - 1].tolist()
    return order.tolist()


@torch.no_grad()
def absorption_scores(
    x: Tensor, f: Tensor, W_dec: Tensor, direction: Tensor, main: list[int], cfg: AbsorptionConfig
) -> dict[str, Tensor]:
    """Per row of activations x (n, d) and their codes f (n, d_sae): `full` (bool, full
    absorption), `fraction` (the absorption fraction), `absorber` (the latent with the
    largest projection on the probe direction (d,), a unit vector) and `silent` (bool: every
    main latent silent, absorbed or not)."""
    W, u = W_dec.detach().float(), direction.float()
    cos = torch.nn.functional.cosine_similarity(W, u[None], dim=1)  # (d_sae,)
    proj = f.float() * cos  # (n, d_sae): each latent's projection on the probe
    act = x.float() @ u  # (n,): the activation's own projection
    main_t = torch.tensor(main, dtype=torch.long)
    main_proj = proj[:, main_t].sum(1)
    silent = (f[:, main_t] < EPS).all(1)
    top = proj.argmax(1)
    top_proj = proj.gather(1, top[:, None])[:, 0]
    safe = act.clamp_min(EPS)
    full = silent & (cos[top] >= cfg.cos_threshold) & (act > 0)
    full &= top_proj / safe >= cfg.projection_share
    may = (cos >= cfg.fraction_cos_threshold)[None] & (proj > 0)
    may[:, main_t] = False
    k = min(cfg.max_absorbers, proj.shape[1])
    absorbers = torch.where(may, proj, torch.zeros_like(proj)).topk(k, dim=1).values.sum(1)
    absorbed = torch.minimum(absorbers, act - main_proj)
    share = absorbed / (absorbed + main_proj).clamp_min(EPS)
    fraction = torch.where(main_proj <= 0, torch.ones_like(act), share.clamp(0, 1))
    none = (act <= 0) | (main_proj >= act) | (absorbers / safe < cfg.projection_share)
    fraction = torch.where(none, torch.zeros_like(act), fraction)
    return {"full": full, "fraction": fraction, "absorber": top, "silent": silent}


def labelled_absorption(
    x: tuple[Tensor, Tensor],
    y: tuple[Tensor, Tensor],
    sae: SAE,
    names: list[str],
    cfg: AbsorptionConfig | None = None,
    probe: Probe | None = None,
) -> dict[str, Any]:
    """Absorption of each class of labels y (train, test) in [0, len(names)) by the SAE, from
    activations x (train, test): a multinomial probe fitted on the training rows (or `probe`),
    each class's main latents from the training codes, scores on its held-out true positives.
    {"probe_accuracy", "classes": {name: {...}}, "mean_absorption", "mean_fraction",
    "mean_main_silent"} (main_silent: the share of true positives on which every main latent
    is silent, whether another latent absorbed the class or many small ones carry it)."""
    cfg = cfg or AbsorptionConfig()
    probe = probe or fit_logistic(x[0], y[0], n_classes=len(names), l2=cfg.l2)
    with torch.no_grad():
        f_tr, f_te = sae.encode(x[0]).cpu(), sae.encode(x[1]).cpu()
    W_dec = sae.W_dec.detach().cpu()
    pred = probe.predict(x[1])
    classes: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(names):
        if int((y[0] == c).sum()) == 0:
            continue
        main = main_latents(f_tr, y[0] == c, cfg.max_k, cfg.f1_jump, cfg.l2)
        tp = (y[1] == c) & (pred == c)
        got = absorption_scores(x[1][tp], f_te[tp], W_dec, probe.direction(c), main, cfg)
        n = int(tp.sum())
        absorbers = Counter(got["absorber"][got["full"]].tolist()).most_common(3)
        classes[name] = {
            "main_latents": main,
            "true_positives": n,
            "absorption_rate": float(got["full"].double().mean()) if n else float("nan"),
            "absorption_fraction": float(got["fraction"].double().mean()) if n else float("nan"),
            "main_silent": float(got["silent"].double().mean()) if n else float("nan"),
            "absorbers": [a for a, _ in absorbers],
        }
    scored = [v for v in classes.values() if v["true_positives"] >= cfg.min_positives]
    mean = lambda key: sum(v[key] for v in scored) / len(scored) if scored else float("nan")  # noqa: E731
    return {
        "probe_accuracy": probe.accuracy(x[1], y[1]),
        "classes": classes,
        "classes_scored": len(scored),
        "mean_absorption": mean("absorption_rate"),
        "mean_fraction": mean("absorption_fraction"),
        "mean_main_silent": mean("main_silent"),
    }


# ----- first letters of a tokenizer's words -----------------------------------------------------


def word_tokens(tokenizer: Any) -> list[tuple[int, str]]:
    """(id, text) of the tokenizer's whole-word tokens (`WORD`)."""
    if tokenizer is None or not hasattr(tokenizer, "decode") or not hasattr(tokenizer, "encode"):
        raise InputError(
            "absorption needs the model's tokenizer to spell its word tokens, and this model "
            "has none; use a run of a language model with a tokenizer (smollm2, glassllm)"
        )
    size = getattr(tokenizer, "vocab_size", None)
    if not isinstance(size, int):
        raise InputError("absorption needs a tokenizer that says its vocab_size")
    words = [(i, tokenizer.decode([i])) for i in range(size)]
    return [(i, w) for i, w in words if WORD.match(w)]


def _prompts(tokenizer: Any, cfg: AbsorptionConfig) -> tuple[Tensor, Tensor, list[bool]]:
    """(ids (n, P + 1), first letters (n,), held out?) of the drawn words: each a fixed
    prefix of n_icl spelled examples followed by the word's token. The activation is read at
    the word: in a causal model the rest of the template cannot change it, so none is run."""
    words = word_tokens(tokenizer)
    if len(words) < cfg.n_icl + 10:
        raise InputError(f"the tokenizer has only {len(words)} whole-word tokens; need more")
    rng = random.Random(cfg.seed)
    rng.shuffle(words)
    examples, words = words[: cfg.n_icl], words[cfg.n_icl : cfg.n_icl + cfg.n_words]
    prefix = "".join(f"{w} has the first letter: {w[1].upper()}\n" for _, w in examples)
    head = list(tokenizer.encode(prefix))
    ids = torch.tensor([[*head, i] for i, _ in words], dtype=torch.long)
    letters = torch.tensor([LETTERS.index(w[1].lower()) for _, w in words])
    n_test = max(1, int(cfg.test_share * len(words)))
    return ids, letters, [j >= len(words) - n_test for j in range(len(words))]


@torch.no_grad()
def first_letter(
    model: nn.Module,
    tokenizer: Any,
    hook: str,
    saes: dict[str, SAE],
    cfg: AbsorptionConfig | None = None,
) -> dict[str, dict[str, Any]]:
    """{sae name: labelled_absorption of the first letters}: the activations at the hook on the
    word token of each prompt, one probe shared by the SAEs."""
    cfg = cfg or AbsorptionConfig()
    ids, letters, held = _prompts(tokenizer, cfg)
    grab = Harvester(model, [hook])
    acts = torch.cat(
        [
            grab(ids[i : i + cfg.batch_size])[hook][:, -1].float()
            for i in range(0, len(ids), cfg.batch_size)
        ]
    )
    test = torch.tensor(held)
    x, y = (acts[~test], acts[test]), (letters[~test], letters[test])
    probe = fit_logistic(x[0], y[0], n_classes=len(LETTERS), l2=cfg.l2)
    out = {}
    for name, sae in saes.items():
        was = sae.training
        sae.eval()
        try:
            got = labelled_absorption(x, y, sae, list(LETTERS), cfg, probe)
        finally:
            sae.train(was)
        out[name] = {**got, "n_words": len(ids), "n_test": int(test.sum())}
    return out
