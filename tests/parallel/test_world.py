"""Where a process stands among torchrun's: the world from the environment, the backend for a
device, the parallel mode."""

import pytest

from saescope.errors import ConfigError
from saescope.parallel import World, backend_for, check_mode

TORCHRUN = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.2"}


def test_one_process_without_torchrun_variables():
    assert World.from_env({}) == World()
    assert World.from_env({"WORLD_SIZE": "1", "RANK": "0"}).size == 1


def test_the_world_torchrun_describes():
    w = World.from_env({**TORCHRUN, "MASTER_PORT": "1234", "TORCHELASTIC_USE_AGENT_STORE": "True"})
    assert (w.rank, w.size, w.local_rank, w.host, w.port) == (1, 4, 1, "10.0.0.2", 1234)
    assert w.agent_store
    assert not World.from_env(TORCHRUN).agent_store  # rank 0 hosts the store


@pytest.mark.parametrize(
    "env, says",
    [
        ({"WORLD_SIZE": "2"}, "RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "2"}, "outside 0..WORLD_SIZE-1=1"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a whole number"),
    ],
)
def test_a_broken_environment_is_one_line(env, says):
    with pytest.raises(ConfigError, match=says) as e:
        World.from_env(env)
    assert "\n" not in str(e.value)


def test_backend_by_device():
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == backend_for("cuda:1") == "nccl"


def test_ddp_is_the_default_on_several_processes():
    assert check_mode(None, World()) is None
    assert check_mode(None, World(rank=0, size=2)) == "ddp"
    assert check_mode("ddp", World()) == "ddp"
    assert check_mode("layers", World(rank=0, size=2)) == "layers"
    with pytest.raises(ConfigError, match="--parallel pipeline is not a parallel mode") as e:
        check_mode("pipeline", World(rank=0, size=2))
    assert "not available yet" not in str(e.value) and "ddp, layers or latents" in str(e.value)
