"""One optimiser step: gradient clipping, the fused Adam shortcut, resampling dead latents."""

import pytest
import torch

from saescope import metrics
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from tests.conftest import small_config


def _dead_after(sae, cfg, task) -> float:
    out = train(sae, task, cfg).saes[0]
    x = torch.cat([task.batch(10_000 + i)[0] for i in range(8)])
    return metrics.dead_fraction(metrics.firing_counts(out.encode(x)))


def test_resampling_revives_dead_latents():
    """Half the latents start dead (a large negative bias): resampling brings them back."""
    task = ArticleTask(ArticleTaskConfig(n_features=16), batch_size=512)
    dead = {}
    for every in (0, 50):
        torch.manual_seed(0)
        sae = make_sae({"architecture": "relu", "d_in": 4, "d_sae": 32, "l1_coef": 0.1})
        with torch.no_grad():
            sae.b_enc[:16] = -100.0
        cfg = TrainConfig(steps=400, dead_tokens=10_000, resample_every=every, progress=False)
        dead[every] = _dead_after(sae, cfg, task)
    assert dead[0] >= 0.5
    assert dead[50] < 0.2


def test_grad_clip_clips_the_gradient_adam_gets(monkeypatch):
    """With grad_clip set, the gradient Adam steps with has exactly that norm and the
    unclipped gradient's direction; a clip above the norm leaves it bitwise alone."""
    from saescope.training import optim as train_module

    seen: list[list[torch.Tensor]] = []
    adam_step = train_module.adam_step

    def spy(opt):
        seen.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
        return adam_step(opt)

    monkeypatch.setattr(train_module, "adam_step", spy)
    task = ArticleTask(ArticleTaskConfig(), batch_size=128)
    grads = {}
    for clip in (None, 1e-3, 1e6):
        seen.clear()
        torch.manual_seed(0)
        sae = make_sae(small_config("relu", d_in=4))
        train(sae, task, TrainConfig(steps=5, progress=False, grad_clip=clip))
        assert len(seen) == 5
        grads[clip] = list(seen)

    def norm(gs):
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in gs])))

    first = norm(grads[None][0])
    assert first > 0.1  # 100x the clip: clipping has work to do
    for step in grads[1e-3]:  # every step, not only the first
        assert norm(step) == pytest.approx(1e-3, rel=1e-4)
    # The first step starts from the same weights: the same gradient, scaled down.
    for clipped, raw in zip(grads[1e-3][0], grads[None][0], strict=True):
        torch.testing.assert_close(clipped, raw * (1e-3 / first), rtol=1e-4, atol=1e-9)
    for big, raw in zip(grads[1e6], grads[None], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(big, raw, strict=True))


def test_adam_step_on_transposed_views_equals_adam():
    """adam_step hands latent-major tensors to the fused kernel as contiguous transposes:
    bitwise the same as opt.step(), moments included."""
    from saescope.training import adam_step

    g = torch.Generator().manual_seed(0)
    W = torch.randn(48, 20, generator=g).t()  # (20, 48) stored latent-major, as W_enc
    b = torch.randn(48, generator=g)
    mine = [torch.nn.Parameter(W.clone().t().contiguous().t()), torch.nn.Parameter(b.clone())]
    ref = [torch.nn.Parameter(W.clone().t().contiguous().t()), torch.nn.Parameter(b.clone())]
    assert not mine[0].is_contiguous()
    opt_mine = torch.optim.Adam(mine, lr=1e-2, betas=(0.8, 0.99), fused=True)
    opt_ref = torch.optim.Adam(ref, lr=1e-2, betas=(0.8, 0.99), fused=True)
    for i in range(6):
        if i == 1:  # the state exists now: from here on the shortcut must carry every step

            def refuse():
                raise AssertionError("adam_step fell back to opt.step()")

            opt_mine.step = refuse  # type: ignore[method-assign]
        gw = torch.randn(48, 20, generator=g).t()
        gb = torch.randn(48, generator=g)
        for ps in (mine, ref):
            ps[0].grad, ps[1].grad = gw.clone().t().contiguous().t(), gb.clone()
        adam_step(opt_mine)
        opt_ref.step()
    for a, r in zip(mine, ref, strict=True):
        assert torch.equal(a, r)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt_mine.state[a][key], opt_ref.state[r][key])
