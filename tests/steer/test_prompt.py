"""`steer_prompt` from Python: edits as (id, value) pairs in any mode, the probabilities it
reports are the model's own, position 0 kept, and a transcoder refused."""

import dataclasses

import pytest
import torch

from saescope.errors import InputError
from saescope.runs import DataSpec, Run
from saescope.saes import make_sae
from saescope.steer import Edit, FeatureEdits, steering
from saescope.steer.prompt import steer_prompt

GLASS = DataSpec("model", model="glassllm", hook="layers.2", context=128)


@pytest.fixture
def run(tmp_path):
    torch.manual_seed(0)
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 64, "k": 4})
    return Run.open(sae.save(tmp_path / "run", {"data": GLASS.to_dict()}))


def test_probabilities_are_the_models_own(run, glass):
    model, tok = glass
    out = steer_prompt(run, [(3, 6.0), (5, 0.0)], "Alice was very", "add", max_new_tokens=4)
    assert [f["id"] for f in out["features"]] == [3, 5]
    ids = torch.tensor([tok.encode("Alice was very")])
    _, sae = run.sae()
    edit = FeatureEdits("layers.2", sae=sae, edits=[Edit(3, 6.0, "add"), Edit(5, 0.0, "add")])
    with torch.no_grad():
        before = torch.softmax(model(ids)[0, -1], -1)
        with steering(model, [edit]):
            after = torch.softmax(model(ids)[0, -1], -1)
    for t in out["features"][0]["top_tokens"]:
        token = tok.encode(t["token"])
        assert len(token) == 1
        assert t["p_unsteered"] == pytest.approx(float(before[token[0]]), abs=1e-6)
        assert t["p_steered"] == pytest.approx(float(after[token[0]]), abs=1e-6)
    assert any(t["p_steered"] != t["p_unsteered"] for t in out["features"][0]["top_tokens"])
    # the probabilities are of both edits at once; adding 0 alone changes nothing
    same = steer_prompt(run, [(5, 0.0)], "Alice was very", "add", max_new_tokens=4)
    assert all(t["p_steered"] == t["p_unsteered"] for t in same["features"][0]["top_tokens"])
    assert same["steered"] == same["unsteered"]


def test_a_one_token_prompt_keeps_its_probabilities_and_zero_mode(run):
    out = steer_prompt(run, [(3, 0.0)], "Alice", "zero", max_new_tokens=3)
    assert all(t["p_steered"] == t["p_unsteered"] for t in out["features"][0]["top_tokens"])
    assert out["unsteered"] and out["steered"]


def test_a_transcoder_is_refused(run, tmp_path):
    spec = dataclasses.replace(GLASS, hook="layers.2.mlp:in", target="layers.2.mlp")
    sae = make_sae({"architecture": "topk", "d_in": 128, "d_sae": 64, "k": 4})
    tc = Run.open(sae.save(tmp_path / "tc", {"data": spec.to_dict()}))
    with pytest.raises(InputError, match="is a transcoder"):
        steer_prompt(tc, [(1, 2.0)], "Alice was")
