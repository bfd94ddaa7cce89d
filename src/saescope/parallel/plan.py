"""The plan at scale (docs/SCALING.md): memory, compute and communication per step of each
parallel mode, from the sizes alone (pure functions; `bench/scaling_plan.py` prints the tables).

Sizes: an SAE of d_in inputs, d_sae latents and d_out outputs (TopK, k active, on the sparse
path: a dense encoder product, a sparse decoder and sparse gradients), its parameters
P = 2 d_in d_sae + d_sae + d_out held in fp32 with their gradient and Adam's two moments
(16 bytes each); a global batch of N tokens per step; W ranks.

- ddp: every rank holds every SAE whole and trains on N / W tokens; the gradients (with the
  fired latents and the loss terms) are all-reduced once per SAE per step.
- layers: the S SAEs (one per hook point) are spread over the ranks; each rank runs the model
  (or reads the cache) on its N / W tokens and sends each hook's activations to the rank that
  trains that hook's SAE, which then trains on all N tokens. As `parallel.layers.Exchange`
  does it: one gather per owning rank, min(S, W) of them one after the other, each rank's
  share padded to the larger share (ceil(N / W) rows); with a cache too. No gradient exchange.
- latents: one SAE's latents split over the ranks (W_enc columns, b_enc, W_dec rows and their
  Adam state); every rank reads all N tokens itself (`training.latents_loop`: no input
  exchange; `shared_input` models one that harvests a share and all-gathers it), keeps its k
  best latents per token as candidates, all-gathers the candidates (value and index, two
  float64s: 16 bytes, as `training.shards.global_topk_mask` sends them) to choose the global
  top k, and all-reduces its partial reconstruction (N x d_out) and a few float64 scalars
  (`training.shards.bytes_per_step`). The reconstruction's gradient needs no exchange (every
  rank holds the whole reconstruction and target, so it computes the same gradient);
  `grad_exchange` counts an implementation that all-reduces it in backward anyway.
  `butterfly` (a log2 W merge of the candidates) is a model only: saescope does not have it.

Host memory is not modelled: saescope builds the whole SAE on every rank's host before the
latents mode keeps its shard, and gathers the final SAE whole on rank 0's CPU (docs/SCALING.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from saescope.parallel.wire import wire_bytes

STATE_BYTES = 16
"""Bytes per parameter held: fp32 weight, fp32 gradient, Adam's two fp32 moments."""
ADAM_TOUCH = 28
"""Bytes of memory traffic per parameter per Adam step: read weight, gradient and moments
(16), write weight and moments (12)."""


@dataclass(frozen=True)
class SAESize:
    """One SAE's shape (TopK with k active latents per token)."""

    d_in: int
    d_sae: int
    k: int = 64
    d_out: int | None = None

    @property
    def out(self) -> int:
        return self.d_out or self.d_in

    @property
    def params(self) -> int:
        """W_enc, b_enc, W_dec, b_dec."""
        return self.d_in * self.d_sae + self.d_sae + self.d_sae * self.out + self.out

    def flops_per_token(self, sparse: bool = True) -> float:
        """Forward and backward FLOPs per token: the dense encoder product (2 d_in d_sae),
        then on the sparse path the decoder and the three gradients on the k active latents
        only (2 k d_out forward, 2 k d_out each for W_dec's and the codes' gradients, 2 k d_in
        for W_enc's); dense: all of them on every latent."""
        width = self.k if sparse else self.d_sae
        return 2 * self.d_in * self.d_sae + 2 * width * (3 * self.out + self.d_in)


@dataclass(frozen=True)
class Cluster:
    """The machines: GPUs per node, and per GPU memory, peak dense bf16 FLOP/s, memory
    bandwidth, and link bandwidth per direction inside a node and across nodes."""

    gpus: int
    per_node: int = 8
    memory: float = 80e9
    flops: float = 990e12
    hbm: float = 3.35e12
    nvlink: float = 450e9
    network: float = 50e9
    """Across nodes, per GPU (one 400 Gb/s NIC per GPU)."""
    hop: float = 5e-6
    """Seconds of latency per message of a collective (`Collective.hops`)."""

    def link(self, ranks: int) -> float:
        """The bandwidth of a collective over `ranks` consecutive GPUs."""
        return self.nvlink if ranks <= self.per_node else self.network


@dataclass(frozen=True)
class Collective:
    """One collective of a step: its kind (what it is for), the torch.distributed call, the
    bytes each rank gives it, and how many ranks take part."""

    kind: str
    collective: str
    nbytes: int
    ranks: int
    root: int = 0
    """The rank a gather goes to."""
    rank: int = 0
    """The rank whose bytes `wire` counts."""

    def wire(self) -> float:
        """The bytes `rank` sends for it (ring algorithms; `wire.wire_bytes`)."""
        return wire_bytes(self.collective, self.nbytes, self.ranks, self.rank, root=self.root)

    def busiest(self) -> float:
        """The bytes through the busiest rank's link: a gather's root receives every other
        rank's part, (W - 1) x nbytes; the others' traffic is even, `wire`."""
        if self.collective == "gather":
            return (self.ranks - 1) * float(self.nbytes)
        return self.wire()

    def hops(self) -> int:
        """Messages in a row on the critical path: 2 log2 W for an all-reduce (nccl's trees
        at scale), log2 W for the butterfly, 1 for a gather (every rank sends to the root),
        W - 1 for the ring all-gather and the others."""
        if self.ranks <= 1:
            return 0
        log = math.ceil(math.log2(self.ranks))
        if self.collective == "all_reduce":
            return 2 * log
        if self.collective == "gather":
            return 1
        return log if self.collective == "butterfly_topk" else self.ranks - 1


@dataclass
class StepPlan:
    """One rank's step: what it holds, computes and sends."""

    mode: str
    ranks: int
    state: float
    """Bytes of parameters, gradients and Adam state held."""
    transient: float
    """Bytes of the largest activations of the step (the encoder's pre-activations of one SAE
    on this rank's tokens, in fp32) plus the model's weights when harvesting."""
    flops: float
    adam_bytes: float
    collectives: list[Collective] = field(default_factory=list)

    @property
    def wire(self) -> float:
        return sum(c.wire() for c in self.collectives)

    def fits(self, cluster: Cluster) -> bool:
        return self.state + self.transient <= cluster.memory

    def times(self, cluster: Cluster) -> dict[str, float]:
        """Seconds per step at peak: compute, Adam's memory traffic, and communication
        (each collective's busiest link at the bandwidth of the ranks it spans, plus its
        hops' latency; nothing overlapped)."""
        comm = sum(
            c.busiest() / cluster.link(c.ranks) + c.hops() * cluster.hop for c in self.collectives
        )
        return {
            "compute": self.flops / cluster.flops,
            "adam": self.adam_bytes / cluster.hbm,
            "comm": comm,
        }

    def limit(self, cluster: Cluster) -> str:
        """What bounds the step: memory when it does not fit, else the longest time."""
        if not self.fits(cluster):
            return "memory"
        t = self.times(cluster)
        return max(t, key=t.get)  # type: ignore[arg-type]


def ddp_collectives(sae: SAESize, ranks: int, tensors: int = 4, terms: int = 2) -> list[Collective]:
    """saescope's ddp step on one SAE as `training.group.Share` runs it: the step's row counts
    and flags (4 int64), then one fp32 buffer of every gradient, the loss terms, the live
    density, the fired latents (d_sae) and a has-gradient flag per tensor. (A log step adds
    the batch's metrics: 8 (d_out + 2) + 8 bytes in float64; AuxK with dead latents 4 (d_out +
    1) bytes; not every step, so not counted here.)"""
    flat = sae.params + terms + 1 + sae.d_sae + tensors
    return [
        Collective("share", "all_reduce", 4 * 8, ranks),
        Collective("gradients", "all_reduce", 4 * flat, ranks),
    ]


def ddp(sae: SAESize, tokens: int, ranks: int, saes: int = 1, model_flops: float = 0.0) -> StepPlan:
    """Every rank: all `saes` SAEs whole, N / W tokens; `model_flops`: the model's forward
    per token when harvesting on the fly (with its weights: `model_bytes` in `with_model`)."""
    mine = tokens / ranks
    return StepPlan(
        "ddp",
        ranks,
        state=saes * sae.params * STATE_BYTES,
        transient=4 * mine * sae.d_sae,
        flops=saes * mine * sae.flops_per_token() + mine * model_flops,
        adam_bytes=saes * sae.params * ADAM_TOUCH,
        collectives=ddp_collectives(sae, ranks) * saes if ranks > 1 else [],
    )


def layers(
    sae: SAESize,
    tokens: int,
    ranks: int,
    saes: int,
    model_flops: float = 0.0,
    act_bytes: int = 2,
) -> StepPlan:
    """`saes` SAEs (one per hook point) over the ranks, ceil(S / W) each, every one trained on
    all N tokens; each rank harvests (or reads) N / W tokens and gives every owning rank its
    hooks' activations in one gather per owner (`parallel.layers.Exchange`: rows padded to
    ceil(N / W); `act_bytes` per value: 2 for a bf16 model). `wire` is the last rank's: it
    owns a hook only when S >= W, so it sends the most."""
    mine = tokens / ranks
    held = math.ceil(saes / ranks)
    padded = math.ceil(tokens / ranks)
    exchange = [
        Collective(
            "activations",
            "gather",
            padded * sae.d_in * act_bytes * len(range(r, saes, ranks)),
            ranks,
            root=r,
            rank=ranks - 1,
        )
        for r in range(min(saes, ranks))
    ]
    return StepPlan(
        "layers",
        ranks,
        state=held * sae.params * STATE_BYTES,
        transient=4 * tokens * sae.d_sae,
        flops=held * tokens * sae.flops_per_token() + mine * model_flops,
        adam_bytes=held * sae.params * ADAM_TOUCH,
        collectives=exchange if ranks > 1 else [],
    )


def latents_collectives(
    sae: SAESize,
    tokens: int,
    ranks: int,
    shared_input: bool = False,
    candidate_bytes: int = 16,
    grad_exchange: bool = False,
    butterfly: bool = False,
) -> list[Collective]:
    """One latents-sharded step as `training.latents` runs it (its bytes given are
    `training.shards.bytes_per_step`'s for a TopK SAE with no dead latents): every rank's k
    candidates per token (`candidate_bytes`: value and index, two float64s) all-gathered, the
    partial reconstructions summed, and the step's float64 scalars (b_dec's gradient, the
    norm, penalty, L0, checkpoint and stop flags, the dead count). Not in saescope, modelled
    only: the input all-gathered when each rank harvests N / W tokens (`shared_input`), the
    candidates merged in log2 W rounds (`butterfly`), the reconstruction's gradient summed
    (`grad_exchange`)."""
    if ranks <= 1:
        return []
    out = []
    if shared_input:
        out.append(Collective("input", "all_gather", 4 * tokens * sae.d_in // ranks, ranks))
    merge = "butterfly_topk" if butterfly else "all_gather"
    out.append(Collective("candidates", merge, tokens * sae.k * candidate_bytes, ranks))
    recon = Collective("reconstruction", "all_reduce", 4 * tokens * sae.out, ranks)
    out.append(recon)
    out.append(Collective("scalars", "all_reduce", 8 * (sae.out + 6), ranks))
    if grad_exchange:
        out.append(Collective("reconstruction grad", "all_reduce", recon.nbytes, ranks))
    return out


def latents(
    sae: SAESize,
    tokens: int,
    ranks: int,
    model_flops: float = 0.0,
    shared_input: bool = False,
    grad_exchange: bool = False,
    butterfly: bool = False,
    saes: int = 1,
) -> StepPlan:
    """`saes` SAEs (one per hook point), each one's latents over the ranks, d_sae / W each,
    all N tokens on every rank."""
    shard = saes * sae.params / ranks
    one = latents_collectives(
        sae, tokens, ranks, shared_input, grad_exchange=grad_exchange, butterfly=butterfly
    )
    return StepPlan(
        "latents",
        ranks,
        state=shard * STATE_BYTES,
        transient=4 * tokens * (sae.d_sae / ranks + 2 * sae.out),
        flops=saes * tokens * sae.flops_per_token() / ranks + tokens / ranks * model_flops,
        adam_bytes=shard * ADAM_TOUCH,
        collectives=one * saes,
    )


def latents_x_ddp(
    sae: SAESize,
    tokens: int,
    group: int,
    replicas: int,
    model_flops: float = 0.0,
    butterfly: bool = False,
) -> StepPlan:
    """Latents sharded over `group` ranks (one node, NVLink) and that group replicated
    `replicas` times (ddp across nodes): each group trains on N / replicas tokens, and each
    rank all-reduces its shard's gradients with the same shard in the other replicas."""
    inner = latents(sae, tokens // replicas, group, model_flops, butterfly=butterfly)
    shard_grads = int(4 * (sae.params / group + sae.d_sae / group))
    if replicas > 1:
        inner.collectives.append(
            Collective("shard gradients", "all_reduce", shard_grads, group * replicas)
        )
    inner.mode, inner.ranks = f"latents {group} x ddp {replicas}", group * replicas
    return inner


def with_model(plan: StepPlan, model_bytes: float) -> StepPlan:
    """The plan with the model's weights held too (harvesting on the fly)."""
    plan.transient += model_bytes
    return plan
