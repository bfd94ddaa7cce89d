import pytest
import torch

from saescope.errors import InputError
from saescope.evals.probing import (
    TASKS,
    ProbingConfig,
    probe_accuracies,
    probing,
    task_contexts,
    top_latents,
)
from saescope.runs import Run


def _task(n: int, seed: int, signal: int = 3) -> tuple[torch.Tensor, ...]:
    """A known answer: labels y; codes f (n, 32) of sparse noise where only latent `signal`
    follows the label; activations x (n, 8) whose first coordinate follows it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    f = torch.rand(n, 32, generator=g) * (torch.rand(n, 32, generator=g) < 0.3)
    f[:, signal] = y * 2.0 + 0.3 * torch.rand(n, generator=g)
    x = torch.randn(n, 8, generator=g)
    x[:, 0] += 3 * (2 * y - 1)
    return x, f, y


def test_mean_difference_picks_the_informative_latent():
    _, f, y = _task(400, 0)
    assert top_latents(f, y, 1).tolist() == [3]
    assert 3 in top_latents(f, y, 5).tolist()


def test_sparse_probes_on_a_known_task():
    x_tr, f_tr, y_tr = _task(400, 0)
    x_te, f_te, y_te = _task(200, 1)
    got = probe_accuracies((x_tr, x_te), (f_tr, f_te), (y_tr, y_te), ks=(1, 2, 5))
    assert got["raw"] > 0.95
    assert got["sae"]["1"] > 0.95
    assert got["n_train"] == 400 and got["n_test"] == 200


def test_shuffled_labels_give_chance():
    _, f_tr, y_tr = _task(400, 0)
    _, f_te, y_te = _task(400, 1)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(800, 8, generator=torch.Generator().manual_seed(6))
    got = probe_accuracies((noise[:400], noise[400:]), (f_tr, f_te), (y_tr[perm], y_te), ks=(1,))
    assert abs(got["sae"]["1"] - 0.5) < 0.1
    assert abs(got["raw"] - 0.5) < 0.1


def test_task_contexts_are_balanced_and_held_out(glass):
    _, tok = glass
    cfg = ProbingConfig(n_train=6, n_test=4, context=16)
    got = task_contexts("milton_vs_shakespeare", cfg, tok.encode)
    ids, labels = got["train"]
    assert ids.shape == (12, 16) and labels.sum() == 6
    assert got["test"][0].shape == (8, 16)
    train = {tuple(r) for r in ids.tolist()}
    assert not train & {tuple(r) for r in got["test"][0].tolist()}
    assert set(TASKS) >= {"milton_vs_shakespeare", "comedy_vs_tragedy"}


def test_probing_a_glassllm_run(glass, glass_sae):
    model, tok = glass
    run = Run.open(glass_sae)
    cfg = ProbingConfig(n_train=24, n_test=12, context=16, ks=(1, 2))
    got = probing(model, tok, "layers.2", run.saes, cfg, tasks=["milton_vs_shakespeare"])
    (result,) = got.values()
    task = result["tasks"]["milton_vs_shakespeare"]
    assert set(task["sae"]) == {"1", "2"}
    for acc in [task["raw"], *task["sae"].values()]:
        assert 0 <= acc <= 1
    assert result["mean"]["raw"] == task["raw"]


def test_bad_config_is_one_line():
    with pytest.raises(InputError, match="at least 1"):
        ProbingConfig(ks=(0, 1))
    with pytest.raises(InputError, match="known: milton_vs_shakespeare"):
        probing(None, None, "h", {}, tasks=["poetry"])  # type: ignore[arg-type]
