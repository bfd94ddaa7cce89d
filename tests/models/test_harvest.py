"""Harvesting activations from glassllm: packing, several hook points in one pass, early exit,
inputs for transcoders, and clear errors."""

import pytest
import torch

from saescope.errors import InputError
from saescope.models.harvest import Harvester, harvest, pack

TEXT = (
    "'Curiouser and curiouser!' cried Alice (she was so much surprised, that for the moment "
    "she quite forgot how to speak good English); 'now I'm opening out like the largest "
    "telescope that ever was! Good-bye, feet!' (for when she looked down at her feet, they "
    "seemed to be almost out of sight, they were getting so far off). "
) * 4


def test_pack_cuts_whole_contexts_and_refuses_too_little_text():
    ctx = pack(list(range(70)), 16)
    assert ctx.shape == (4, 16) and ctx[1, 0] == 16  # the last 6 tokens are dropped
    with pytest.raises(InputError, match="fewer than one context of 16"):
        pack(list(range(15)), 16)


def test_several_points_in_one_pass_match_a_plain_forward(glass):
    model, tok = glass
    ctx = pack(tok.encode(TEXT), 32)
    hooks = ["layers.1", "layers.1.mlp:in", "layers.1.mlp"]
    batches = list(harvest(model, ctx, hooks, batch_size=3))
    assert sum(b["tokens"].numel() for b in batches) == ctx.shape[0] * 31
    first = batches[0]
    ids = ctx[:3]
    with torch.no_grad():
        x = model.layers[0](model.embed(ids))
        h = model.layers[1].norm2(x + model.layers[1].attn(model.layers[1].norm1(x)))
        mlp = model.layers[1].mlp(h)
        out = model.layers[1](x)
    torch.testing.assert_close(first["layers.1"], out[:, 1:].reshape(-1, 128))
    torch.testing.assert_close(first["layers.1.mlp:in"], h[:, 1:].reshape(-1, 128))
    torch.testing.assert_close(first["layers.1.mlp"], mlp[:, 1:].reshape(-1, 128))
    assert torch.equal(first["tokens"], ids[:, 1:].reshape(-1))
    assert torch.equal(first["positions"][:31], torch.arange(1, 32))


def test_the_forward_pass_stops_after_the_last_hook(glass):
    model, tok = glass
    ran = []
    handles = [
        block.register_forward_hook(lambda _m, _i, _o, n=n: ran.append(n))
        for n, block in enumerate(model.layers)
    ]
    try:
        Harvester(model, ["layers.1.attn", "layers.0"])(pack(tok.encode(TEXT), 16)[:2])
    finally:
        for h in handles:
            h.remove()
    assert ran == [0]  # layers.1.attn fired inside block 1, which then stopped: no block 2 or 3


def test_bad_hook_specs_are_named(glass):
    model, tok = glass
    ids = pack(tok.encode(TEXT), 16)[:1]
    with pytest.raises(InputError, match="no hook points"):
        Harvester(model, [])
    with pytest.raises(InputError, match="must be 'in' or 'out'"):
        Harvester(model, ["layers.1:middle"])
    with pytest.raises(InputError, match="never reached"):
        Harvester(model, ["layers"])(ids)  # the ModuleList itself is never called
