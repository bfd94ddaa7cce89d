"""The data-parallel group on torch.distributed: the collectives the training loop asks for
(`training.group.Group`: sums, minima, rows gathered, rank 0's tensors, the batch top-k cut
over every rank), started and stopped with the process group, and a lost rank named.

Every collective waits at most `timeout` seconds. A rank that dies or hangs then makes the
others stop with one line (`RankLostError`) naming it: each rank bumps its heartbeat counter in
the rendezvous store every second from a thread, and a rank whose collective failed looks for
the counters that stopped moving.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from saescope.errors import SaescopeError
from saescope.parallel.world import DEFAULT_TIMEOUT, World, backend_for

BEAT_S = 1.0
"""Seconds between a rank's heartbeats in the store."""


class RankLostError(SaescopeError):
    """Another rank stopped answering (it died, or hung past the timeout)."""


class DDPGroup:
    """This process's place in a torch.distributed process group training one run."""

    mode = "ddp"
    """The parallel mode the group trains in (`parallel.launched` sets it)."""

    def __init__(self, world: World, device: str = "cpu", timeout: float = DEFAULT_TIMEOUT):
        self.rank, self.size, self.world = world.rank, world.size, world
        self.timeout = timeout
        self.backend = backend_for(device)
        self.device = torch.device("cpu")
        if self.backend == "nccl":
            torch.cuda.set_device(world.local_rank)
            self.device = torch.device("cuda", world.local_rank)
        try:
            self.store = self._store(max(timeout, 30.0), hosts=not world.agent_store)
            dist.init_process_group(
                self.backend,
                store=dist.PrefixStore("saescope_pg", self.store),
                rank=self.rank,
                world_size=self.size,
                timeout=timedelta(seconds=timeout),
            )
        except RuntimeError as e:  # unreachable host, port taken, a rank that never came
            raise RankLostError(
                f"rank {self.rank} could not join the {self.size} processes at "
                f"{world.host}:{world.port} ({_first(e)}); check MASTER_ADDR and MASTER_PORT, "
                "or launch with torchrun"
            ) from None
        self._stop = threading.Event()
        self._beats = threading.Thread(target=self._beat, name="saescope-heartbeat", daemon=True)
        self._beats.start()

    def _store(self, timeout: float, hosts: bool) -> dist.TCPStore:
        w = self.world
        return dist.TCPStore(
            w.host,
            w.port,
            w.size if hosts else None,
            is_master=hosts and w.rank == 0,
            timeout=timedelta(seconds=timeout),
            wait_for_workers=False,
        )

    def close(self) -> None:
        """Stop the heartbeat and leave the process group."""
        self._stop.set()
        if dist.is_initialized():
            dist.destroy_process_group()

    # ----- the collectives (training.group.Group) --------------------------------------------

    def sum_(self, t: Tensor) -> Tensor:
        return self._in_place(t, lambda u: dist.all_reduce(u, dist.ReduceOp.SUM))

    def min_(self, t: Tensor) -> Tensor:
        return self._in_place(t, lambda u: dist.all_reduce(u, dist.ReduceOp.MIN))

    def broadcast_(self, t: Tensor) -> Tensor:
        return self._in_place(t, lambda u: dist.broadcast(u, src=0))

    def gather(self, t: Tensor) -> Tensor:
        """Every rank's rows of t (its own count each: padded to the largest to travel),
        concatenated in rank order."""
        n = torch.tensor([t.shape[0]], device=self.device)
        counts = [torch.zeros_like(n) for _ in range(self.size)]
        self._call(dist.all_gather, counts, n)
        most = int(max(int(c) for c in counts))
        padded = t.new_zeros((most, *t.shape[1:]), device=self.device)
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._call(dist.all_gather, parts, padded)
        return torch.cat([p[: int(c)] for p, c in zip(parts, counts, strict=True)]).to(t.device)

    def gather_to(self, t: Tensor, dst: int) -> list[Tensor] | None:
        """Every rank's t (the same shape on each) on rank `dst`, in rank order; None on the
        others (`--parallel layers`: the activations an SAE's owner trains on)."""
        u = t.contiguous().to(self.device)
        parts = [torch.empty_like(u) for _ in range(self.size)] if self.rank == dst else None
        self._call(dist.gather, u, parts, dst)
        return None if parts is None else [p.to(t.device) for p in parts]

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor:
        """The k-th largest value of every rank's candidates (each rank's k largest, or all it
        has): gathered, k per rank (-inf pads), and their k largest's smallest."""
        mine = candidates.reshape(-1).to(self.device)
        if mine.numel() > k:
            mine = mine.topk(k, sorted=False).values
        padded = mine.new_full((k,), float("-inf"))
        padded[: mine.numel()] = mine
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._call(dist.all_gather, parts, padded)
        return torch.cat(parts).topk(k, sorted=False).values.min().to(candidates.device)

    # ----- for latent sharding (`--parallel latents`, training.latents) ------------------

    def all_gather(self, t: Tensor) -> list[Tensor]:
        """Every rank's t (the same shape on each), in rank order."""
        u = t.contiguous().to(self.device)
        parts = [torch.empty_like(u) for _ in range(self.size)]
        self._call(dist.all_gather, parts, u)
        return [p.to(t.device) for p in parts]

    def gather_to_0(self, t: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor] | None:
        """Every rank's t (rank r's of shape shapes[r]) on rank 0's CPU, received one rank at
        a time (so rank 0's device holds one shard at once); None on the other ranks."""
        if self.rank != 0:
            self._call(dist.send, t.contiguous().to(self.device), 0)
            return None
        parts = [t.detach().cpu().clone()]
        for r in range(1, self.size):
            buf = torch.empty(shapes[r], dtype=t.dtype, device=self.device)
            self._call(dist.recv, buf, r)
            parts.append(buf.cpu())
        return parts

    # ----- failures ----------------------------------------------------------------------------

    def _in_place(self, t: Tensor, op: Callable[[Tensor], Any]) -> Tensor:
        u = t if t.is_contiguous() and t.device == self.device else t.contiguous().to(self.device)
        self._call(op, u)
        if u is not t:
            t.copy_(u)
        return t

    def _call(self, op: Callable[..., Any], *args: Any) -> None:
        try:
            op(*args)
        except RuntimeError as e:  # torch.distributed's errors are RuntimeErrors
            raise self.lost(e) from None

    def _beat(self) -> None:
        """Bump this rank's heartbeat counter every BEAT_S seconds (own store connection)."""
        try:
            store = self._store(10.0, hosts=False)
            while not self._stop.wait(BEAT_S):
                store.add(f"saescope/beat/{self.rank}", 1)
        except RuntimeError:  # the store is gone: the run is ending
            return

    def silent_ranks(self) -> list[int]:
        """The other ranks whose heartbeat stopped (over 2.5 beats); [0] when the store,
        which rank 0 hosts unless torchrun's agent does, cannot be reached."""
        try:
            store = self._store(10.0, hosts=False)
            keys = [f"saescope/beat/{r}" for r in range(self.size)]
            before = [store.add(k, 0) for k in keys]
            time.sleep(2.5 * BEAT_S)
            after = [store.add(k, 0) for k in keys]
        except RuntimeError:
            return [] if self.world.agent_store else [0]
        return [r for r in range(self.size) if r != self.rank and after[r] == before[r]]

    def lost(self, error: BaseException) -> RankLostError:
        """The one-line error for a failed collective, naming the rank(s) that stopped."""
        silent = self.silent_ranks()
        cause = _first(error)
        if silent:
            who = ", ".join(map(str, silent))
            what = f"rank {who} of {self.size} stopped answering (its process died or hung)"
        else:
            what = f"a collective found no answer within {self.timeout:g} s (a rank is stuck)"
        return RankLostError(
            f"rank {self.rank}: {what}; stopping. Resume from the run's last checkpoint with "
            f"the same launch and --resume [{cause}]"
        )


def _first(error: BaseException) -> str:
    """The first sentence of a torch.distributed error, without gloo's source path."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(error).split()))
    return text.split(". ")[0][:120]
