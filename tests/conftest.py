import os

import pytest
import torch

from saescope.models import load_model
from saescope.saes import ARCHITECTURES

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each avoids oversubscription.
    torch.set_num_threads(1)


def small_config(arch: str, d_in: int = 6, d_sae: int = 16, **kw) -> dict:
    """A small config of each architecture for tests."""
    extra = {"topk": {"k": 3}, "batchtopk": {"k": 3}}.get(arch, {})
    return {"architecture": arch, "d_in": d_in, "d_sae": d_sae, **extra, **kw}


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def glass():
    """glassllm and its tokenizer, loaded once (tests must not change its weights)."""
    return load_model("glassllm")
