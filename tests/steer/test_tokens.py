"""`token_activations`: the features on each token equal the SAE's codes of that token's
activation in a plain forward pass; position 0 and outlier tokens are reported, not encoded;
bad texts and settings are one-line errors. `activation_matrix`: the same codes, dense, for the
text's most active features."""

import pytest
import torch

from saescope.data.outliers import OutlierRule
from saescope.errors import ConfigError, InputError
from saescope.models.hooks import attached
from saescope.saes import make_sae
from saescope.steer.tokens import activation_matrix, token_activations

TEXT = "The Queen said to the King that the Queen was tired"


@pytest.fixture
def sae():
    torch.manual_seed(0)
    return make_sae({"architecture": "topk", "d_in": 128, "d_sae": 64, "k": 6}).eval()


def layer2(model, ids):
    """glassllm's layers.2 output for ids (T,), from a whole forward pass."""
    got = {}
    with torch.no_grad(), attached(model, {"layers.2": lambda v, _: got.update(x=v)}):
        model(torch.tensor([ids]))
    return got["x"][0]


def test_features_are_the_codes_of_each_token(sae, glass):
    model, tok = glass
    out = token_activations(sae, model, tok, "layers.2", TEXT, top=3)
    ids = tok.encode(TEXT)
    assert [t["token"] for t in out["tokens"]] == [tok.decode([i]) for i in ids]
    with torch.no_grad():
        f = sae.encode(layer2(model, ids))
    assert out["tokens"][0] == {"token": tok.decode([ids[0]]), "skipped": "first", "features": []}
    for pos, row in enumerate(out["tokens"][1:], start=1):
        assert row["skipped"] is None
        vals, idx = torch.topk(f[pos], 3)
        want = [(int(i), float(v)) for v, i in zip(vals, idx, strict=True) if v > 0]
        got = [(x["feature"], x["act"]) for x in row["features"]]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=1e-5)
    alive = (f[1:] > 0).any(0).nonzero().flatten().tolist()
    assert sorted(x["feature"] for x in out["features"]) == alive
    peaks = [x["max"] for x in out["features"]]
    assert peaks == sorted(peaks, reverse=True) and out["max"] == pytest.approx(peaks[0])
    counts = {x["feature"]: x["count"] for x in out["features"]}
    assert counts == {i: int((f[1:, i] > 0).sum()) for i in alive}


def test_outlier_tokens_are_reported_not_encoded(sae, glass):
    model, tok = glass
    ids = tok.encode(TEXT)
    norms = layer2(model, ids).norm(dim=1)
    cut = float(norms[1:].median())  # about half the tokens are beyond it
    out = token_activations(sae, model, tok, "layers.2", TEXT, outliers=OutlierRule(1.0, cut))
    far = [p for p in range(1, len(ids)) if norms[p] > cut]
    assert far and len(far) < len(ids) - 1
    for pos, row in enumerate(out["tokens"]):
        if pos in far:
            assert row == {"token": tok.decode([ids[pos]]), "skipped": "outlier", "features": []}
        elif pos:
            assert row["skipped"] is None and row["features"]


def test_bad_texts_and_settings_are_one_line_errors(sae, glass):
    model, tok = glass
    with pytest.raises(InputError, match="empty"):
        token_activations(sae, model, tok, "layers.2", "  ")
    with pytest.raises(InputError, match="more than the 128 taken"):
        token_activations(sae, model, tok, "layers.2", " the" * 129)
    with pytest.raises(InputError, match="more than the 5 taken"):
        token_activations(sae, model, tok, "layers.2", TEXT, limit=5)
    with pytest.raises(ConfigError, match="top must be at least 1"):
        token_activations(sae, model, tok, "layers.2", TEXT, top=0)
    small = make_sae({"architecture": "topk", "d_in": 16, "d_sae": 8, "k": 2}).eval()
    with pytest.raises(InputError, match=r"d_in 16 but hook layers\.2 has width 128"):
        token_activations(small, model, tok, "layers.2", TEXT)


def test_the_matrix_is_the_codes_of_the_most_active_features(sae, glass):
    model, tok = glass
    ids = tok.encode(TEXT)
    with torch.no_grad():
        f = sae.encode(layer2(model, ids))
    f[0] = 0  # position 0 is not encoded
    out = activation_matrix(sae, model, tok, "layers.2", TEXT, columns=5)
    assert [t["token"] for t in out["tokens"]] == [tok.decode([i]) for i in ids]
    assert out["tokens"][0]["skipped"] == "first"
    cols = [c["feature"] for c in out["features"]]
    peak = f.max(0).values
    assert len(cols) == 5 and sorted(peak[cols].tolist()) == sorted(peak.topk(5).values.tolist())
    acts = torch.tensor(out["acts"])
    assert acts.shape == (len(ids), 5)
    assert torch.allclose(acts, f[:, cols], atol=1e-5)
    assert out["max"] == pytest.approx(float(peak.max()))
    first_peaks = [int(acts[:, j].argmax()) for j in range(5)]
    assert first_peaks == sorted(first_peaks)  # columns by the token where each peaks
    assert [c["max"] for c in out["features"]] == pytest.approx(acts.max(0).values.tolist())
    wide = activation_matrix(sae, model, tok, "layers.2", TEXT, columns=10_000)
    assert len(wide["features"]) == int((f > 0).any(0).sum()) < 10_000
    with pytest.raises(ConfigError, match="columns must be at least 1"):
        activation_matrix(sae, model, tok, "layers.2", TEXT, columns=0)
    with pytest.raises(InputError, match="empty"):
        activation_matrix(sae, model, tok, "layers.2", "")
