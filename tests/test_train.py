"""The training loop's parts: normalisation folding, schedules, dead latents, sweeps."""

import json

import pytest
import torch

from saescope import metrics
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from tests.conftest import small_config


def test_folded_sae_takes_raw_activations(arch):
    """Trained on scaled data, the returned SAE on raw x equals the live SAE on scaled x,
    scaled back."""
    task = ArticleTask(ArticleTaskConfig(d_in=6, coef_low=5.0, coef_high=20.0), batch_size=256)
    live = make_sae(small_config(arch))
    result = train(live, task, TrainConfig(steps=30, progress=False))
    folded = result.saes[0]
    x, _ = task.batch(999)
    live.eval()
    scale = (6**0.5) / float(torch.cat([task.batch(i)[0] for i in range(16)]).norm(dim=1).mean())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), live(x * scale) / scale, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(folded.encode(x), live.encode(x * scale), rtol=1e-4, atol=1e-4)
    assert abs(scale - 1) > 0.5  # the data really was rescaled


def test_lr_schedule_warmup_and_decay():
    cfg = TrainConfig(steps=100, lr_warmup=0.1, lr_decay_start=0.8)
    assert cfg.lr_factor(0) == pytest.approx(0.1)
    assert cfg.lr_factor(9) == pytest.approx(1.0)
    assert cfg.lr_factor(50) == 1.0
    assert cfg.lr_factor(90) == pytest.approx(0.5)
    assert cfg.lr_factor(99) == pytest.approx(0.05)
    assert cfg.sparsity_factor(0) == pytest.approx(1 / 5)
    assert cfg.sparsity_factor(60) == 1.0


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


def test_sweep_in_one_pass_matches_separate_runs():
    task = ArticleTask(ArticleTaskConfig(), batch_size=256)
    cfg = TrainConfig(steps=40, progress=False)
    configs = [{"architecture": "topk", "d_in": 4, "d_sae": 16, "k": k} for k in (1, 2, 3)]
    torch.manual_seed(0)
    together = train([make_sae(c) for c in configs], task, cfg).saes
    for c, t in zip(configs, together, strict=True):
        torch.manual_seed(0)
        for prev in configs[: configs.index(c)]:
            make_sae(prev)  # advance the RNG as the sweep's construction did
        alone = train(make_sae(c), task, cfg).saes[0]
        assert torch.equal(alone.W_dec, t.W_dec)


def test_metrics_log(tmp_path):
    task = ArticleTask(ArticleTaskConfig(), batch_size=128)
    train(
        make_sae(small_config("gated", d_in=4)),
        task,
        TrainConfig(steps=20, log_every=5, progress=False),
        tmp_path,
    )
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    for key in (
        "loss",
        "loss_mse",
        "loss_l1",
        "loss_gate_aux",
        "l0",
        "mse",
        "explained_variance",
        "dead_fraction",
    ):
        assert key in rows[-1]
    r = rows[-1]
    assert r["loss"] == pytest.approx(r["loss_mse"] + r["loss_l1"] + r["loss_gate_aux"], rel=1e-5)


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


@pytest.mark.parametrize(
    ("arch", "extra"),
    [
        ("topk", {"k": 2, "aux_coef": 0.5}),
        ("batchtopk", {"k": 2, "aux_coef": 0.5}),
        ("relu", {"l1_coef": 3.0}),
        ("jumprelu", {}),
    ],
)
def test_sparse_path_leaves_loss_curves_unchanged(tmp_path, arch, extra):
    """The seed's synthetic task (40 features in 32-D), trained on the sparse and on the dense
    path from the same start: the logged loss, L0 and explained-variance curves agree (rtol
    1e-3; the paths differ only in float32 summation order)."""
    task = ArticleTask(ArticleTaskConfig(d_in=32, n_features=40, max_active=3), batch_size=256)
    cfg = TrainConfig(steps=300, log_every=10, dead_tokens=2000, progress=False)
    curves = {}
    for mode in ("sparse", "dense"):
        torch.manual_seed(0)
        sae = make_sae({"architecture": arch, "d_in": 32, "d_sae": 60, **extra})
        sae.sparse_mode = mode
        train(sae, task, cfg, out_dir=tmp_path / mode)
        rows = [json.loads(r) for r in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
        curves[mode] = torch.tensor([[r["loss"], r["l0"], r["explained_variance"]] for r in rows])
    assert curves["sparse"].shape == (30, 3)
    torch.testing.assert_close(curves["sparse"], curves["dense"], rtol=1e-3, atol=1e-4)


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
