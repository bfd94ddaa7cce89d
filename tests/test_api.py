"""The public API: what `import saescope` offers, and that importing it changes nothing."""

import subprocess
import sys

import pytest
import torch

import saescope
from saescope.data import ArticleTask, ArticleTaskConfig


def test_the_public_names_work_together(tmp_path):
    from saescope import SAE, TopKConfig, TrainConfig, load, save, train

    task = ArticleTask(ArticleTaskConfig(d_in=6), batch_size=64)
    sae = SAE.__subclasses__()  # every architecture is a final subclass
    assert {c.config_cls.name for c in sae} == set(saescope.ARCHITECTURES)
    trained = train(saescope.make_sae(TopKConfig(d_in=6, d_sae=12, k=2)), task, TrainConfig(2))
    save(trained.saes[0], tmp_path / "a")
    x = torch.randn(5, 6)
    for opened in (load(tmp_path / "a"), SAE.load(tmp_path / "a")):
        torch.testing.assert_close(opened(x), trained.saes[0](x), rtol=0, atol=0)


def test_every_architecture_config_is_exported():
    for name, cls in saescope.ARCHITECTURES.items():
        assert getattr(saescope, cls.config_cls.__name__) is cls.config_cls, name


def test_make_sae_names_an_unknown_key():
    with pytest.raises(saescope.ConfigError, match=r"unknown key 'l1_coeff'.*'l1_coef'"):
        saescope.make_sae({"architecture": "relu", "d_in": 4, "d_sae": 8, "l1_coeff": 30})


_STATE = """
import matplotlib, torch
matplotlib.use("pdf")
before = (torch.get_num_threads(), torch.get_default_dtype(), torch.random.get_rng_state())
import saescope, saescope.runs, saescope.cli, saescope.experiments.demo
after = (torch.get_num_threads(), torch.get_default_dtype(), torch.random.get_rng_state())
assert matplotlib.get_backend() == "pdf", matplotlib.get_backend()
assert before[:2] == after[:2] and torch.equal(before[2], after[2])
import matplotlib.pyplot as plt
assert not plt.get_fignums()
print("unchanged")
"""


def test_importing_saescope_changes_no_global_state():
    """Not matplotlib's backend (report.py used to select Agg at import), not torch's threads,
    default dtype or random state."""
    out = subprocess.run([sys.executable, "-c", _STATE], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "unchanged", out.stderr[-2000:]
