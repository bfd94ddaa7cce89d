"""`evaluate`: each metric against a hand computation, truncation, density and true features,
its errors and the SAE's mode; `plot_density`; `model_batches` and `evaluate_in_model` on
glassllm."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from saescope import metrics
from saescope.errors import ConfigError, InputError
from saescope.evaluate import evaluate, evaluate_in_model, model_batches, plot_density
from saescope.models import load_model
from saescope.models.downstream import downstream
from saescope.models.harvest import pack
from saescope.models.hooks import HookPair
from saescope.saes import make_sae
from tests.test_metrics import plain_metrics

PNG = b"\x89PNG\r\n\x1a\n"
TEXT = (
    "'Then you should say what you mean,' the March Hare went on. 'I do,' Alice hastily "
    "replied; 'at least--at least I mean what I say--that's the same thing, you know.' "
) * 12

# x and, for the hand-set SAE below, its codes f = relu(x) (latent 2 dead) and y_hat = f/2.
X = torch.tensor([[1.0, -1.0], [2.0, 1.0], [-1.0, 3.0], [3.0, 2.0]])


def _hand_sae():
    """A ReLU SAE on 2-D data: latents 0 and 1 read x's coordinates, latent 2 never fires;
    decoder rows (0.5, 0), (0, 0.5) and (1, 1)/sqrt(2); no biases. So f = [relu(x), 0] and
    y_hat = relu(x) / 2."""
    sae = make_sae({"architecture": "relu", "d_in": 2, "d_sae": 3})
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[0.5, 0.0], [0.0, 0.5], [2**-0.5, 2**-0.5]]))
        sae.b_dec.zero_()
    return sae


def test_every_metric_matches_a_hand_computation():
    out = evaluate(_hand_sae(), [(X, X)])
    assert out["architecture"] == "relu" and out["n_tokens"] == 4
    assert out["l0"] == pytest.approx((1 + 2 + 1 + 2) / 4)
    # squared errors per row: 0.25 + 1, 1 + 0.25, 1 + 2.25, 2.25 + 1
    assert out["mse"] == pytest.approx(9 / 4)
    # sum ||y - mean y||^2 with mean y = (1.25, 1.25): 8.75 per column
    assert out["explained_variance"] == pytest.approx(1 - 9 / 17.5)
    cosines = [1 / math.sqrt(2), 1.0, 3 / math.sqrt(10), 1.0]
    assert out["cosine"] == pytest.approx(sum(cosines) / 4)
    # ||relu(x)||^2 = x . relu(x) = 1, 5, 9, 13; y_hat = relu(x) / 2
    assert out["relative_reconstruction_bias"] == pytest.approx((28 / 4) / (28 / 2))
    norms_hat = [1.0, math.sqrt(5), 3.0, math.sqrt(13)]
    norms = [math.sqrt(2), math.sqrt(5), math.sqrt(10), math.sqrt(13)]
    assert out["norm_ratio"] == pytest.approx(0.5 * sum(norms_hat) / sum(norms))
    assert out["dead_fraction"] == pytest.approx(1 / 3)
    # latents 0 and 1 fire on 3 of 4 tokens, above 10 %
    assert out["dense_fraction"] == pytest.approx(2 / 3)
    assert "density" not in out and "mmcs" not in out


def test_a_transcoder_is_scored_against_y_not_x():
    sae = make_sae(
        {"architecture": "relu", "d_in": 2, "d_sae": 3, "d_out": 2, "apply_b_dec_to_input": False}
    )
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -1.0]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        sae.b_dec.zero_()
    y = X.relu()  # exactly what the SAE gives
    out = evaluate(sae, [(X, y)])
    assert out["mse"] == 0.0 and out["explained_variance"] == pytest.approx(1.0)
    assert evaluate(sae, [(X, X)])["mse"] == pytest.approx(2 / 4)


def test_max_tokens_truncates_across_batches_and_stops_reading():
    sae = _hand_sae()
    rows = torch.randn(9, 2)
    pulled = []

    def batches():
        for i in range(3):
            pulled.append(i)
            part = rows[3 * i : 3 * i + 3]
            yield part, part

    out = evaluate(sae, batches(), max_tokens=5)
    assert out["n_tokens"] == 5
    assert pulled == [0, 1]  # the third batch is never asked for
    whole = evaluate(sae, [(rows[:5], rows[:5])], keep_density=True)
    again = evaluate(sae, [(rows[:3], rows[:3]), (rows[3:], rows[3:])], 5, keep_density=True)
    for key in ("l0", "mse", "explained_variance", "cosine", "dead_fraction"):
        assert again[key] == pytest.approx(whole[key]), key
    assert torch.equal(again["density"], whole["density"])
    assert evaluate(sae, [(rows, rows)], max_tokens=100)["n_tokens"] == 9


@torch.no_grad()
def _plain(sae, x, y):
    """The metrics the plain way: every row encoded at once, concatenated, then scored."""
    f = sae.encode(x)
    out = plain_metrics(y, sae.decode(f), f)
    out["density"] = metrics.firing_counts(f).float() / x.shape[0]
    return out


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_streaming_gives_the_concatenated_numbers(arch):
    """Several uneven batches, each also cut into pieces of chunk_rows rows: the same metrics
    as encoding all rows at once, and the SAE never sees more than chunk_rows rows."""
    torch.manual_seed(0)
    extra = {"k": 4} if arch == "topk" else {"l1_coef": 0.1}
    sae = make_sae({"architecture": arch, "d_in": 16, "d_sae": 64, **extra}).eval()
    x = 2.0 + torch.randn(300, 16) * torch.linspace(0.5, 3.0, 16)
    y = x if arch == "relu" else x.roll(1, 1)  # topk scored against another target too
    bounds = [0, 5, 6, 140, 300]
    batches = [(x[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]
    seen = []
    encode = sae.encode

    def recording_encode(rows):
        seen.append(rows.shape[0])
        return encode(rows)

    sae.encode = recording_encode
    got = evaluate(sae, batches, max_tokens=290, keep_density=True, chunk_rows=32)
    del sae.encode
    assert max(seen) == 32 and sum(seen) == 290
    want = _plain(sae, x[:290], y[:290])
    assert list(got) == ["architecture", *[k for k in want if k != "density"], "density"]
    for key, value in want.items():
        if key == "density":
            torch.testing.assert_close(got[key], value)
        else:
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_keep_density_gives_each_latents_firing_fraction():
    out = evaluate(_hand_sae(), [(X[:2], X[:2]), (X[2:], X[2:])], keep_density=True)
    assert out["density"].dtype == torch.float32
    torch.testing.assert_close(out["density"], torch.tensor([0.75, 0.75, 0.0]))


def test_true_features_give_mmcs_and_the_worst_cosine():
    features = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    out = evaluate(_hand_sae(), [(X, X)], features=features)
    # best matches: row 0 (cos 1), row 2 (cos 1), nothing above 0 for (0, -1) (row 0: cos 0)
    assert out["mmcs"] == pytest.approx(2 / 3)
    assert out["min_feature_cosine"] == pytest.approx(0.0, abs=1e-7)


def test_a_batch_of_the_wrong_width_is_named():
    sae = _hand_sae()
    with pytest.raises(InputError, match=r"data has d_in=3, d_out=3 but the SAE expects d_in=2"):
        evaluate(sae, [(torch.zeros(4, 3), torch.zeros(4, 3))])
    with pytest.raises(InputError, match=r"d_in=2, d_out=5 but the SAE expects d_in=2, d_out=2"):
        evaluate(sae, [(X, X), (X, torch.zeros(4, 5))])


def test_no_data_is_an_error():
    with pytest.raises(InputError, match="no evaluation data"):
        evaluate(_hand_sae(), [])
    with pytest.raises(InputError, match="no evaluation data"):
        evaluate(_hand_sae(), [(X, X)], max_tokens=0)


@pytest.mark.parametrize("training", [True, False])
def test_the_sae_is_evaluated_in_eval_mode_and_its_mode_restored(training):
    sae = _hand_sae().train(training)
    seen = []

    def batches():
        seen.append(sae.training)
        yield X, X

    evaluate(sae, batches())
    assert seen == [False]
    assert sae.training is training


def test_batchtopk_is_evaluated_with_its_inference_threshold():
    """In eval mode BatchTopK is a JumpReLU at its threshold; in training, a batch top-k."""
    sae = make_sae({"architecture": "batchtopk", "d_in": 2, "d_sae": 3, "k": 1})
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, 0.0, -1.0]))
        sae.threshold.fill_(0.5)
    sae.train()
    out = evaluate(sae, [(X, X)])
    assert out["l0"] == pytest.approx(1.5)  # every positive coordinate > 0.5 fires
    assert sae.training


def test_the_mode_is_restored_when_a_batch_is_refused():
    sae = _hand_sae().train()
    with pytest.raises(InputError):
        evaluate(sae, [(torch.zeros(4, 3), torch.zeros(4, 3))])
    assert sae.training


def test_a_bare_tensor_batch_means_y_is_x():
    sae = make_sae({"architecture": "relu", "d_in": 4, "d_sae": 8})
    x = torch.randn(2, 4)
    out = evaluate(sae, [x])
    assert out["n_tokens"] == 2 and out["mse"] == evaluate(sae, [(x, x)])["mse"]


# ----- plot_density ----------------------------------------------------------------------------


def test_plot_density_writes_a_png_atomically(tmp_path):
    density = torch.tensor([0.0, 0.0, 1e-4, 3e-3, 0.02, 0.5, 1.0])
    path = tmp_path / "sub" / "density.png"
    got = plot_density(density, path, "layer 1")
    assert got == path
    data = path.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["density.png"]  # no temp file
    plot_density(torch.zeros(5), path)  # all dead: nothing to histogram, still a figure
    assert path.read_bytes().startswith(PNG) and path.read_bytes() != data
    assert sorted(p.name for p in path.parent.iterdir()) == ["density.png"]


# ----- in a model: glassllm ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def glass():
    model, tok = load_model("glassllm")
    return model, pack(tok.encode(TEXT), 16)


def _identity_sae(d: int = 128, **kw):
    """relu(x) - relu(-x) = x exactly: latents i and d + i read +x_i and -x_i."""
    sae = make_sae({"architecture": "relu", "d_in": d, "d_sae": 2 * d, **kw})
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_model_batches_harvest_until_max_tokens(glass):
    model, ctx = glass
    many = ctx.repeat(3, 1)[:40]  # more than one harvest batch of 32 contexts
    hooks = HookPair("layers.1")
    got = list(model_batches(model, many, hooks, 10**6, batch_size=32))
    assert [x.shape[0] for x, _ in got] == [32 * 15, 8 * 15]
    assert [x.shape[0] for x, _ in model_batches(model, many, hooks, 10**6)] == [480, 120]
    small = list(model_batches(model, many, hooks, 10**6, batch_size=8))
    assert [x.shape[0] for x, _ in small] == [8 * 15] * 5
    torch.testing.assert_close(torch.cat([x for x, _ in small]), torch.cat([x for x, _ in got]))
    assert all(y is x and x.shape[1] == 128 for x, y in got)
    first = list(model_batches(model, many, hooks, 1))
    assert len(first) == 1 and torch.equal(first[0][0], got[0][0])
    pair = HookPair("layers.1.mlp:in", "layers.1.mlp")
    ((x, y),) = list(model_batches(model, ctx[:2], pair, 30))
    with torch.no_grad():
        torch.testing.assert_close(model.layers[1].mlp(x), y, atol=1e-5, rtol=1e-5)


def test_an_identity_reconstruction_recovers_everything(glass):
    model, ctx = glass
    ctx = ctx[:8]
    sae = _identity_sae().train()
    out = evaluate_in_model(sae, model, ctx, "layers.1", max_tokens=10**6)
    assert sae.training  # restored
    assert out["n_tokens"] == ctx.shape[0] * 15
    assert out["mse"] == pytest.approx(0.0, abs=1e-10)
    assert out["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert out["kl_div"] == pytest.approx(0.0, abs=1e-6)
    assert out["ce_zero"] > out["ce_clean"] == pytest.approx(out["ce_spliced"], abs=1e-6)
    assert out["density"].shape == (256,) and "downstream" not in out


def test_downstream_numbers_cover_only_the_contexts_evaluated(glass):
    model, ctx = glass
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 256, "k": 8})
    out = evaluate_in_model(sae, model, ctx, "layers.1", max_tokens=20)  # 2 contexts of 15
    assert out["n_tokens"] == 20
    want = downstream(model, ctx[:2], "layers.1", lambda a: sae(a), keep_first=True)
    for key in ("ce_clean", "ce_spliced", "ce_zero", "kl_div"):
        assert out[key] == pytest.approx(want[key], rel=1e-6), key
    assert out["ce_spliced"] > out["ce_clean"]  # an untrained SAE loses something


def test_a_transcoder_replaces_its_module_and_other_pairs_are_skipped(glass):
    model, ctx = glass
    tc = make_sae({"architecture": "relu", "d_in": 128, "d_sae": 64, "apply_b_dec_to_input": False})
    out = evaluate_in_model(tc, model, ctx[:4], "layers.1.mlp:in", "layers.1.mlp")
    assert "downstream" not in out and out["kl_div"] > 0
    skipped = evaluate_in_model(tc, model, ctx[:4], "layers.1.mlp:in", "layers.2.mlp")
    assert skipped["downstream"].startswith("skipped: a transcoder spliced in needs")
    assert "ce_clean" not in skipped and "mse" in skipped


def test_two_token_contexts_leave_nothing_to_score(glass):
    model, ctx = glass
    out = evaluate_in_model(_identity_sae(), model, ctx[:, :2], "layers.0")
    assert out["n_tokens"] == ctx.shape[0]
    assert out["downstream"].startswith("skipped: contexts of 2 tokens")
    assert "ce_loss_recovered" not in out


class _Encoder(nn.Module):
    """An encoder-like model: ids -> an output with hidden states and no logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.layer = nn.Linear(8, 8)

    def forward(self, ids):
        return SimpleNamespace(last_hidden_state=self.layer(self.embed(ids)))


def test_a_model_without_logits_gets_the_downstream_note():
    ids = torch.arange(40).view(4, 10)
    sae = _identity_sae(8)
    out = evaluate_in_model(sae, _Encoder(), ids, "layer")
    assert out["downstream"] == "skipped: _Encoder gives no next-token logits"
    assert out["n_tokens"] == 4 * 9 and out["mse"] == pytest.approx(0.0, abs=1e-10)
    assert "ce_clean" not in out and "density" in out


def test_the_batch_size_bounds_every_forward_pass_and_changes_no_number(glass):
    model, ctx = glass
    ctx = ctx[:5]
    passes = []

    def record(_module, args):
        passes.append(args[0].shape[0])

    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 256, "k": 8})
    handle = model.register_forward_pre_hook(record)
    try:
        small = evaluate_in_model(sae, model, ctx, "layers.1", max_tokens=10**6, batch_size=2)
    finally:
        handle.remove()
    # a probe of the vocabulary (one context); harvest: 3 passes of at most 2 contexts;
    # downstream: 3 passes per batch of 2
    assert max(passes) == 2 and passes.count(2) == 2 * 4 and len(passes) == 3 + 1 + 3 * 3
    big = evaluate_in_model(sae, model, ctx, "layers.1", max_tokens=10**6, batch_size=64)
    for key in ("mse", "explained_variance", "ce_clean", "ce_spliced", "ce_zero", "kl_div"):
        assert small[key] == pytest.approx(big[key], rel=1e-5), key
    with pytest.raises(ConfigError, match="--batch-size of at least 1"):
        evaluate_in_model(sae, model, ctx, "layers.1", batch_size=0)
