"""Training on several processes with torch.distributed, launched by torchrun.

Data parallel (`--parallel ddp`, the default when WORLD_SIZE > 1): every rank holds the whole
SAE and trains on its share of each global batch (`Shard`); the training loop's `group` hooks
(`training.group`) sum the gradients and whatever it estimates from data over the ranks
(`DDPGroup`), so the same command gives the same SAE at any world size. `launched` starts
and stops the process group (nccl on CUDA, gloo on the CPU, collectives bounded by a timeout so
that a lost rank stops the others with one line naming it). docs/DISTRIBUTED.md tells how.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from saescope.errors import ConfigError
from saescope.parallel.ddp import DDPGroup, RankLostError
from saescope.parallel.shard import Shard
from saescope.parallel.world import DEFAULT_TIMEOUT, MODES, World, backend_for, check_mode


@contextlib.contextmanager
def launched(
    mode: str | None = None,
    device: str = "cpu",
    timeout: float = DEFAULT_TIMEOUT,
    world: World | None = None,
) -> Iterator[DDPGroup | None]:
    """The process group this process belongs to (from torchrun's environment), joined for
    the block and left after it; None for one process."""
    world = world or World.from_env()
    if not timeout > 0:
        raise ConfigError(f"--dist-timeout must be a positive number of seconds, got {timeout}")
    mode = check_mode(mode, world)
    if mode is None or world.size == 1:
        yield None
        return
    group = DDPGroup(world, device, timeout)
    group.mode = mode  # ddp, or latents (training.latents_loop)
    try:
        yield group
    finally:
        group.close()


__all__ = [
    "DEFAULT_TIMEOUT",
    "MODES",
    "DDPGroup",
    "RankLostError",
    "Shard",
    "World",
    "backend_for",
    "check_mode",
    "launched",
]
