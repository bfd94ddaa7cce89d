"""Steering on the other models saescope loads: SmolLM2 (saescope's Llama port) and MiniLM (a
Hugging Face encoder called with an attention mask): with no feature edited the intervened
forward is the clean forward, padded batches included, and edits never touch padding."""

import pytest
import torch

from saescope.models import load_model
from saescope.steer import Edit, FeatureEdits, steering
from tests.steer.common import random_topk

TEXT = (
    "Sparse autoencoders decompose the activations of a neural network into many features, "
    "few of which are active on any one token, and each feature has a direction."
)


def _sae(d: int, seed: int = 0):
    return random_topk(d, 4 * d, 8, seed)


def _padded(tok, n: int = 20, short: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tok.encode(TEXT)[:n]
    batch = torch.tensor([ids, ids[:short] + [0] * (n - short)])
    mask = torch.ones_like(batch)
    mask[1, short:] = 0
    return batch, mask


@pytest.mark.slow
def test_smollm2_unedited_is_exact_with_padding_and_edits_match_unpadded():
    model, tok = load_model("smollm2")
    batch, mask = _padded(tok)
    sae = _sae(576)
    with torch.no_grad():
        clean = model(batch)
        # edits that keep every value (scale 1) go through encode and decode: the error term
        # makes the pass the clean one
        same_values = [Edit(i, 1.0, mode="scale") for i in range(0, 2304, 7)]
        silent = FeatureEdits("model.layers.15", sae=sae, edits=same_values)
        with steering(model, [silent], attention_mask=mask):
            same = model(batch)
        assert (same - clean).abs().max() <= 1e-5
        edit = FeatureEdits("model.layers.15", sae=sae, edits=[Edit(3, 20.0)])
        with steering(model, [edit], attention_mask=mask):
            both = model(batch)
        with steering(model, [edit]):
            alone = model(batch[1:, :12])
    assert (both - clean).abs().max() > 1e-2  # the clamp acts
    assert (both[1, :12] - alone[0]).abs().max() <= 1e-4


@pytest.mark.slow
def test_minilm_reads_the_mask_it_is_called_with():
    model, tok = load_model("minilm")
    batch, mask = _padded(tok)
    sae = _sae(384, 1)
    seen = {}
    after = dict(model.named_modules())["encoder.layer.3"]
    h = after.register_forward_pre_hook(
        lambda m, a, kw: seen.update(x=(a[0] if a else kw["hidden_states"])), with_kwargs=True
    )
    try:
        with torch.no_grad():
            clean = model(input_ids=batch, attention_mask=mask).last_hidden_state
            x = seen["x"]
            keep = [Edit(i, 1.0, mode="scale") for i in range(0, 1536, 5)]
            with steering(model, [FeatureEdits("encoder.layer.2", sae=sae, edits=keep)]):
                same = model(input_ids=batch, attention_mask=mask).last_hidden_state
            edit = FeatureEdits("encoder.layer.2", sae=sae, edits=[Edit(5, 9.0)])
            with steering(model, [edit]):
                model(input_ids=batch, attention_mask=mask)
            x2 = seen["x"]
    finally:
        h.remove()
    assert (same - clean).abs().max() <= 1e-5
    changed = (x2 - x).abs().sum(-1) > 0
    assert changed[1, 12:].sum() == 0  # padding untouched: the mask came from the call
    assert changed[1, 1:12].all() and changed[0, 1:].all() and not changed[:, 0].any()
