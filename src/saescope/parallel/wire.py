"""The communication model: the bytes one rank sends on the wire for a collective, under the
algorithms nccl and gloo run, from the bytes each rank gives it.

- all-reduce (ring, both backends): 2 (W - 1) / W x the tensor's bytes (reduce-scatter, then
  all-gather, each moving (W - 1) / W of it through every rank).
- all-gather: (W - 1) x the rank's own bytes (= (W - 1) / W of the gathered result).
- reduce-scatter: (W - 1) / W x the input's bytes.
- broadcast: gloo sends the whole tensor from the root to every other rank ((W - 1) x bytes on
  the root, nothing elsewhere); nccl pipelines it along a ring (every rank but the root's
  predecessor forwards it once).
- all-to-all: the chunks for the other ranks, (W - 1) / W of the input when chunks are equal.
- gather to one rank, send: the tensor once from every rank but the root; recv: nothing.
- butterfly top-k (a top-k merge in ceil(log2 W) rounds: each rank swaps its current best
  candidates with a partner and keeps the best of both): ceil(log2 W) x the candidates' bytes.

Measured on gloo here (`bench/distributed.py`: the bytes each rank's process writes to its
sockets during the collective, against this model; docs/SCALING.md).
"""

from __future__ import annotations

import math

REDUCE = ("all_reduce",)
GATHER = ("all_gather", "all_gather_into_tensor")
SCATTER = ("reduce_scatter", "reduce_scatter_tensor")
TO_ALL = ("all_to_all", "all_to_all_single")
BROADCAST = ("broadcast",)
BUTTERFLY = ("butterfly_topk",)
TO_ONE = ("gather", "send")
COLLECTIVES = REDUCE + GATHER + SCATTER + TO_ALL + BROADCAST + BUTTERFLY + TO_ONE + ("recv",)


def wire_bytes(
    collective: str, nbytes: int, size: int, rank: int = 0, backend: str = "nccl", root: int = 0
) -> float:
    """The bytes rank `rank` of `size` sends for one `collective` given `nbytes` by each rank
    (its tensor for all-reduce and broadcast, its own part for all-gather, its whole input for
    reduce-scatter and all-to-all). An unknown collective: its bytes once to every other rank
    (an upper bound for the ones above)."""
    if size <= 1:
        return 0.0
    share = (size - 1) / size
    if collective in REDUCE:
        return 2 * share * nbytes
    if collective in GATHER:
        return (size - 1) * nbytes
    if collective in SCATTER or collective in TO_ALL:
        return share * nbytes
    if collective in TO_ONE:
        return 0.0 if rank == root else float(nbytes)
    if collective == "recv":
        return 0.0
    if collective in BUTTERFLY:
        return math.ceil(math.log2(size)) * nbytes
    if collective in BROADCAST:
        if backend == "gloo":
            return float((size - 1) * nbytes) if rank == root else 0.0
        return 0.0 if rank == (root - 1) % size else float(nbytes)
    return float((size - 1) * nbytes)
