"""Feature absorption (Chanin et al. 2024, "A is for Absorption") on a hierarchical ground truth.

Parents fire on their own; when a parent fires, one of its children often fires too, and a
child never fires without its parent. An SAE trained with saescope's own loop (TopK, and a
ReLU-L1 SAE in the same pass) is matched to the true features one-to-one (Hungarian on
decoder cosine), then on held-out samples:

- parent-latent recall: how often the parent's latent fires when the parent is active and
  (a) none of its children is, (b) one of its children is, (c) none of its children but a
  child of another parent is (a control for "more features are active");
- child-decoder lean: the cosine of each child's latent's decoder row with its own parent's
  direction, against the mean cosine with the other parents' directions (the control).

Absorption is the parent latent not firing when a child fires, the child latent's decoder
carrying the parent's direction instead. A Matryoshka SAE (Bussmann et al. 2025) on the same
stream should resist it: its claims are the opposite ones, and its recall beside TopK's.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor

from saescope import metrics
from saescope.data import HierarchicalTask, HierarchicalTaskConfig
from saescope.data.stream import HELD_OUT_SEED_OFFSET
from saescope.errors import ConfigError
from saescope.experiments.common import make_saes, sae_label, torch_threads
from saescope.report import Claim, Section, subplots
from saescope.saes import SAE
from saescope.training import TrainConfig, train


@dataclass(frozen=True)
class AbsorptionConfig:
    """The task, the SAEs and their training."""

    task: HierarchicalTaskConfig = field(default_factory=HierarchicalTaskConfig)
    """The hierarchical ground truth (its feature_seed is replaced by the run's seed)."""
    saes: tuple[dict[str, Any], ...] = (
        {"architecture": "topk", "k": 3},
        {"architecture": "relu", "l1_coef": 2.0},
        {"architecture": "matryoshka", "k": 3},
    )
    """SAEs trained together on one stream; d_in is the task's, d_sae defaults to n_total."""
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1500, lr_decay_start=0.5, progress=False)
    )
    """Training settings (seed and progress are set per run)."""
    batch_size: int = 1024
    """Samples per training batch."""
    eval_samples: int = 32_768
    """Held-out samples the measurements use."""
    threads: int | None = 1
    """torch CPU threads while training and measuring (restored after): one is fastest for
    matrices this small and avoids thread contention on a busy machine; None leaves it."""


DEFAULT = AbsorptionConfig()


@dataclass
class SAEAbsorption:
    """The absorption measurements of one trained SAE. Per-parent lists are in parent order,
    per-child lists in child order (children of parent 0 first)."""

    architecture: str
    label: str
    """The architecture and its settings, e.g. "topk k=3"."""
    l0: float
    explained_variance: float
    parent_match_cos: list[float]
    """Decoder cosine of each parent's matched latent with the parent."""
    child_match_cos: list[float]
    """Decoder cosine of each child's matched latent with the child."""
    parent_precision: list[float]
    """Per parent: the fraction of its latent's firings on which the parent is active."""
    recall_alone: list[float]
    """Per parent: its latent's firing recall when it is active and none of its children is."""
    recall_with_child: list[float]
    """Per parent: the same when one of its children is active."""
    recall_other_child: list[float]
    """Per parent: the same when none of its children but another parent's child is active."""
    child_cos_parent: list[float]
    """Per child: cosine of its latent's decoder row with its own parent's direction."""
    child_cos_control: list[float]
    """Per child: mean cosine of its latent's decoder row with the other parents' directions."""

    def summary(self) -> dict[str, float]:
        """The means over parents / children."""
        mean = statistics.fmean
        return {
            "l0": self.l0,
            "explained_variance": self.explained_variance,
            "parent_match_cos": mean(self.parent_match_cos),
            "child_match_cos": mean(self.child_match_cos),
            "parent_precision": mean(self.parent_precision),
            "recall_alone": mean(self.recall_alone),
            "recall_with_child": mean(self.recall_with_child),
            "recall_other_child": mean(self.recall_other_child),
            "child_cos_parent": mean(self.child_cos_parent),
            "child_cos_control": mean(self.child_cos_control),
        }


@dataclass
class AbsorptionResult:
    """One seed's run: the task, the true L0, and each SAE's measurements."""

    seed: int
    task: HierarchicalTaskConfig
    true_l0: float
    saes: list[SAEAbsorption]
    steps: int


def _recall(fired: Tensor, mask: Tensor) -> float:
    """Fraction of the masked samples on which the latent fired (nan when none are masked)."""
    n = int(mask.sum())
    return float(fired[mask].sum()) / n if n else float("nan")


def _parent_recalls(
    task: HierarchicalTask, fired: Tensor, active: Tensor, latent: Tensor
) -> tuple[list[float], list[float], list[float]]:
    """Per parent: its latent's recall alone / with its child / with another parent's child."""
    alone, with_child, other = [], [], []
    n_children_on = active[:, task.parent_of >= 0].sum(1)  # (N,)
    for p in range(task.cfg.n_parents):
        own_on = active[:, task.children(p)]  # (N, C)
        own = own_on.any(1)
        others = n_children_on > own_on.sum(1)  # some other parent's child is active
        on, f = active[:, p], fired[:, latent[p]]
        alone.append(_recall(f, on & ~own))
        with_child.append(_recall(f, on & own))
        other.append(_recall(f, on & ~own & others))
    return alone, with_child, other


def _child_leans(
    task: HierarchicalTask, W_dec: Tensor, latent: Tensor
) -> tuple[list[float], list[float]]:
    """Per child: decoder cosine with its own parent, and mean with the other parents."""
    d = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    parents = task.features[task.parents]  # (P, d)
    own, control = [], []
    for k in (task.parent_of >= 0).nonzero().flatten().tolist():
        p = int(task.parent_of[k])
        cos = parents @ d[latent[k]]  # (P,)
        own.append(float(cos[p]))
        control.append(float(torch.cat([cos[:p], cos[p + 1 :]]).mean()))
    return own, control


@torch.no_grad()
def measure(
    sae: SAE, task: HierarchicalTask, x: Tensor, c: Tensor, label: str = ""
) -> SAEAbsorption:
    """Absorption measurements of one SAE on samples x with true coefficients c."""
    f = sae.encode(x)
    W_dec = sae.W_dec.detach()
    latent, cos = metrics.hungarian_match(W_dec, task.features)
    if latent.numel() < task.cfg.n_total:
        raise ConfigError(
            f"the SAE has {latent.numel()} latents for {task.cfg.n_total} true features; "
            "give it d_sae >= n_total"
        )
    fired, active = f != 0, c != 0
    alone, with_child, other = _parent_recalls(task, fired, active, latent)
    own, control = _child_leans(task, W_dec, latent)
    P = task.cfg.n_parents
    is_child = task.parent_of >= 0
    return SAEAbsorption(
        architecture=sae.cfg.name,
        label=label or sae.cfg.name,
        l0=metrics.l0(f),
        explained_variance=metrics.explained_variance(x, sae.decode(f)),
        parent_match_cos=cos[:P].tolist(),
        child_match_cos=cos[is_child].tolist(),
        parent_precision=metrics.firing_f1(f, c, latent)["precision"][:P].tolist(),
        recall_alone=alone,
        recall_with_child=with_child,
        recall_other_child=other,
        child_cos_parent=own,
        child_cos_control=control,
    )


def run(seed: int = 0, progress: bool = False, cfg: AbsorptionConfig = DEFAULT) -> AbsorptionResult:
    """Train the SAEs on the hierarchical task and measure absorption on held-out samples."""
    task_cfg = HierarchicalTaskConfig(**{**asdict(cfg.task), "feature_seed": seed})
    task = HierarchicalTask(task_cfg, batch_size=cfg.batch_size, seed=seed)
    train_cfg = TrainConfig(**{**asdict(cfg.train), "seed": seed, "progress": progress})
    with torch_threads(cfg.threads):
        saes = make_saes(cfg.saes, seed, d_in=task_cfg.d_in, d_sae=task_cfg.n_total)
        trained = train(saes, task, train_cfg).saes
        held_out = HierarchicalTask(task_cfg, cfg.eval_samples, seed + HELD_OUT_SEED_OFFSET)
        x, c = held_out.batch_with_truth(0)
        measured = [
            measure(sae, held_out, x, c, sae_label(spec))
            for sae, spec in zip(trained, cfg.saes, strict=True)
        ]
    return AbsorptionResult(
        seed=seed,
        task=task_cfg,
        true_l0=float((c != 0).sum(1).float().mean()),
        saes=measured,
        steps=train_cfg.steps,
    )


# ----- the report section --------------------------------------------------------------------

RECALL_DROP = 0.2
"""A claimed recall drop must be at least this (absolute): far above sampling noise (each
parent has hundreds of held-out samples in each condition)."""
LEAN = 0.2
"""A claimed decoder lean must exceed the control cosine by this: random unit vectors in the
default 64-D have cosine s.d. 1/8, so a mean over 32 children has s.d. about 0.02."""


RESISTS = ("matryoshka",)
"""Architectures claimed to resist absorption (their claims are the opposite ones)."""
KEEP = 0.1
"""A resisting SAE's parent recall with a child stays this close to it without one."""


def _per_arch(results: list[AbsorptionResult], i: int) -> list[dict[str, float]]:
    return [r.saes[i].summary() for r in results]


def _arch_claims(results: list[AbsorptionResult], i: int) -> list[Claim]:
    label = results[0].saes[i].label
    rows = _per_arch(results, i)
    seeds = [r.seed for r in results]
    drop = Claim(
        f"{label}: a parent's latent fires less often when one of its children fires "
        f"(recall drops by >= {RECALL_DROP})",
        "; ".join(
            f"seed {s}: {m['recall_alone']:.2f} without a child, {m['recall_with_child']:.2f} "
            "with one"
            for s, m in zip(seeds, rows, strict=True)
        ),
        all(m["recall_alone"] - m["recall_with_child"] >= RECALL_DROP for m in rows),
    )
    specific = Claim(
        f"{label}: the drop comes from the parent's own children, not from more features being "
        f"active (recall with another parent's child is higher by >= {RECALL_DROP})",
        "; ".join(
            f"seed {s}: {m['recall_with_child']:.2f} with its own child, "
            f"{m['recall_other_child']:.2f} with another parent's child"
            for s, m in zip(seeds, rows, strict=True)
        ),
        all(m["recall_other_child"] - m["recall_with_child"] >= RECALL_DROP for m in rows),
    )
    lean = Claim(
        f"{label}: child latents' decoders lean toward their parent's direction (cosine with "
        f"the own parent exceeds that with unrelated parents by >= {LEAN})",
        "; ".join(
            f"seed {s}: {m['child_cos_parent']:.2f} vs {m['child_cos_control']:+.2f}"
            for s, m in zip(seeds, rows, strict=True)
        ),
        all(m["child_cos_parent"] - m["child_cos_control"] >= LEAN for m in rows),
    )
    return [drop, specific, lean]


def _resist_claims(results: list[AbsorptionResult], i: int) -> list[Claim]:
    """Claims for an SAE that should not absorb, and its parent recall beside TopK's."""
    label, rows, seeds = results[0].saes[i].label, _per_arch(results, i), [r.seed for r in results]
    topk = [j for j, s in enumerate(results[0].saes) if s.architecture == "topk"][:1]
    base = _per_arch(results, topk[0]) if topk else []
    recall = "; ".join(
        f"seed {s}: {m['recall_alone']:.2f} without a child, {m['recall_with_child']:.2f} with one"
        + (f" ({b['recall_with_child']:.2f} for topk)" if base else "")
        for s, m, b in zip(seeds, rows, base or rows, strict=True)
    )
    leans = "; ".join(
        f"seed {s}: {m['child_cos_parent']:.2f} vs {m['child_cos_control']:+.2f}"
        for s, m in zip(seeds, rows, strict=True)
    )
    claims = [
        Claim(
            f"{label}: a parent's latent keeps firing when one of its children fires (recall "
            f"with a child within {KEEP} of recall without)",
            recall,
            all(m["recall_alone"] - m["recall_with_child"] < KEEP for m in rows),
        ),
        Claim(
            f"{label}: child latents' decoders do not lean toward their parent's direction "
            f"(cosine with the own parent exceeds that with unrelated parents by < {LEAN})",
            leans,
            all(m["child_cos_parent"] - m["child_cos_control"] < LEAN for m in rows),
        ),
    ]
    if base:
        gaps = [
            m["recall_with_child"] - b["recall_with_child"] for m, b in zip(rows, base, strict=True)
        ]
        text = f"{label} resists absorption where {results[0].saes[topk[0]].label} does not: "
        text += f"its parent-latent recall with a child is higher by >= {RECALL_DROP}"
        claims.append(Claim(text, recall, all(g >= RECALL_DROP for g in gaps)))
    return claims


def _strip(ax: Any, x: float, values: list[float], color: str, rng: torch.Generator) -> None:
    """Points jittered around x, and a bar at their mean."""
    vals = [v for v in values if v == v]  # drop nan (a condition without samples)
    if not vals:
        return
    jitter = (torch.rand(len(vals), generator=rng) - 0.5) * 0.25
    ax.bar(x, statistics.fmean(vals), width=0.35, color=color, alpha=0.35)
    ax.scatter([x + float(j) for j in jitter], vals, s=8, color=color, zorder=3)


def figure(results: list[AbsorptionResult]) -> Figure:
    """Left: parent-latent recall by condition; right: child-decoder cosine with its own
    parent vs unrelated parents. Each point is one parent (left) or child (right) of a seed."""
    rng = torch.Generator().manual_seed(0)
    n = len(results[0].saes)
    fig, (left, right) = subplots(1, 2, figsize=(11, 4))
    conds = [
        ("recall_alone", "no child", "tab:blue"),
        ("recall_with_child", "own child", "tab:red"),
        ("recall_other_child", "other's child", "tab:gray"),
    ]
    leans = [
        ("child_cos_parent", "own parent", "tab:red"),
        ("child_cos_control", "others", "tab:gray"),
    ]
    for ax, groups in ((left, conds), (right, leans)):
        ticks, labels = [], []
        for i in range(n):
            for j, (key, name, color) in enumerate(groups):
                x = i * (len(groups) + 1) + j
                values = [v for r in results for v in getattr(r.saes[i], key)]
                _strip(ax, x, values, color, rng)
                ticks.append(x)
                labels.append(f"{name}\n{results[0].saes[i].label}" if j == 0 else name)
        ax.set_xticks(ticks, labels, fontsize=8)
    left.set_ylabel("parent latent's firing recall")
    left.set_title("When the parent is active, with ...")
    left.set_ylim(-0.05, 1.05)
    right.set_ylabel("cosine of the child latent's decoder row")
    right.set_title("Child latent's decoder vs parent directions")
    right.axhline(0, color="black", lw=0.5)
    fig.tight_layout()
    return fig


def section(results: list[AbsorptionResult]) -> Section:
    """The absorption section of the report, from one result per seed."""
    t = results[0].task
    kinds = [_resist_claims if s.architecture in RESISTS else _arch_claims for s in results[0].saes]
    claims = [c for i, kind in enumerate(kinds) for c in kind(results, i)]
    text = (
        f"Hierarchical ground truth: {t.n_parents} parent features, each with "
        f"{t.n_children} mutually exclusive children, plus {t.n_independent} independent "
        f"features, all random unit vectors in {t.d_in}-D. A parent fires with probability "
        f"{t.parent_prob}; when it does, one of its children fires too with probability "
        f"{t.child_prob}, and a child never fires without its parent. Independent features "
        f"fire with probability {t.independent_prob}; coefficients are U({t.coef_low}, "
        f"{t.coef_high}); true L0 "
        + ", ".join(f"{r.true_l0:.2f}" for r in results)
        + f". SAEs with one latent per true feature ({t.n_total}), "
        + " and ".join(s.label for s in results[0].saes)
        + f", are trained together for {results[0].steps} steps with saescope's loop on seeds "
        + ", ".join(str(r.seed) for r in results)
        + ". Each true feature is matched to one latent (Hungarian, decoder cosine); on held-out "
        "samples we measure how often a parent's latent fires when the parent is active without "
        "a child, with one of its own children, or with another parent's child instead, and "
        "the cosine of each child latent's decoder row with its own parent's direction against "
        "the mean cosine with the other parents'. Absorption (Chanin et al. 2024) predicts the "
        "parent latent goes quiet when a child fires and the child latent's decoder carries the "
        "parent's direction. A Matryoshka SAE (nested prefixes of the dictionary, each trained "
        "to reconstruct on its own; Bussmann et al. 2025) is predicted to resist it: its "
        "first latents must stand for the parents whatever the later ones do."
    )
    table = [{"seed": r.seed, "sae": s.label, **s.summary()} for r in results for s in r.saes]
    return Section(
        key="absorption",
        title="Feature absorption in a hierarchy of features",
        text=text,
        claims=claims,
        figures=[
            (
                "Parent-latent firing recall when the parent is active with no child, with one "
                "of its own children, or with another parent's child (left); cosine of each "
                "child latent's decoder row with its own parent's direction and the mean with "
                "the other parents' (right). Points: parents / children of all seeds; bars: means",
                figure(results),
            )
        ],
        tables=[("Means over parents (recall) and children (cosine), per seed and SAE", table)],
    )
