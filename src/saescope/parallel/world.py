"""Where this process stands among the processes torchrun (or any launcher setting the same
variables) started: its rank, the world size, its local rank; the backend for a device."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from saescope.errors import ConfigError

MODES = ("ddp", "layers", "latents")
"""The parallel modes `--parallel` takes."""
DEFAULT_TIMEOUT = 60.0
"""Seconds a collective waits for the other processes before this one gives up: a rank that
died or hung makes the others stop within it. It must exceed rank 0's checkpoint writes."""


@dataclass(frozen=True)
class World:
    """This process among the launched ones (torchrun's RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR and MASTER_PORT); one process when WORLD_SIZE is unset."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    host: str = "127.0.0.1"
    port: int = 29500
    agent_store: bool = False
    """Whether torchrun's agent hosts the rendezvous store (else rank 0 does)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        env = os.environ if env is None else env
        if int(_number(env, "WORLD_SIZE", "1")) <= 1:
            return cls()
        world = cls(
            rank=_number(env, "RANK"),
            size=_number(env, "WORLD_SIZE"),
            local_rank=_number(env, "LOCAL_RANK", "0"),
            host=env.get("MASTER_ADDR", "127.0.0.1"),
            port=_number(env, "MASTER_PORT", "29500"),
            agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
        )
        if not 0 <= world.rank < world.size:
            raise ConfigError(f"RANK={world.rank} is outside 0..WORLD_SIZE-1={world.size - 1}")
        return world


def _number(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    value = env.get(name, default)
    if value is None:
        raise ConfigError(f"WORLD_SIZE is set but {name} is not; launch with torchrun")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a whole number; launch with torchrun") from None


def backend_for(device: str) -> str:
    """nccl for CUDA devices, gloo for the CPU."""
    return "nccl" if device.startswith("cuda") else "gloo"


def check_mode(mode: str | None, world: World) -> str | None:
    """The parallel mode to run: the one asked for, or ddp when launched on several
    processes; None for one process without a mode."""
    if mode is not None and mode not in MODES:
        raise ConfigError(
            f"--parallel {mode} is not a parallel mode; give {', '.join(MODES[:-1])} or "
            f"{MODES[-1]} (or run one process)"
        )
    return mode or ("ddp" if world.size > 1 else None)
