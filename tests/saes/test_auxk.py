"""AuxK: dead latents trained back on the residual."""

import torch

from saescope import metrics
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import make_sae
from saescope.training import TrainConfig, train


def _dead_after(sae, cfg, task) -> float:
    out = train(sae, task, cfg).saes[0]
    x = torch.cat([task.batch(10_000 + i)[0] for i in range(8)])
    return metrics.dead_fraction(metrics.firing_counts(out.encode(x)))


def test_auxk_revives_dead_latents():
    """Half the latents start too weak to win the top-k: AuxK trains many of them back."""
    task = ArticleTask(ArticleTaskConfig(d_in=16, n_features=64), batch_size=512)
    dead = {}
    for coef in (0.0, 1 / 32):
        torch.manual_seed(0)
        sae = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 128, "k": 8, "aux_coef": coef})
        with torch.no_grad():
            sae.W_enc[:, 64:] *= 0.01
        cfg = TrainConfig(steps=400, dead_tokens=10_000, progress=False)
        dead[coef] = _dead_after(sae, cfg, task)
    assert dead[0.0] >= 0.4
    assert dead[1 / 32] <= dead[0.0] - 0.1
