"""Writing saescope SAEs in other formats (`convert`, `save(format=)`, `save_saelens`): every
architecture SAELens can express goes saescope -> SAELens -> saescope bit for bit, with the
same architecture and config; the SAELens files alone (saescope's metadata removed) give the
same numbers as SAELens reads them; what SAELens cannot express is refused in one line.
(`make interop-check` has SAELens's own loader read these files.)"""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import saescope
from saescope.errors import FormatError
from saescope.interop import FORMATS, convert, detect, load, load_saelens, metadata, save
from saescope.interop.saelens_write import saelens_architecture
from saescope.saes import SAE, make_sae

SAELENS = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
TC = {"d_out": 12, "apply_b_dec_to_input": False}
SKIP = {**TC, "skip_connection": True}
CASES = {
    # name: (saescope config fields, the SAELens architecture it is written as)
    "relu": ({"architecture": "relu"}, "standard"),
    "relu_weighted": ({"architecture": "relu", "l1_mode": "weighted"}, "standard"),
    "relu_no_b_dec_in": ({"architecture": "relu", "apply_b_dec_to_input": False}, "transcoder"),
    "topk": ({"architecture": "topk", "k": 5}, "topk"),
    "topk_no_b_dec_in": (
        {"architecture": "topk", "k": 5, "apply_b_dec_to_input": False},
        "topk",
    ),
    "batchtopk": ({"architecture": "batchtopk", "k": 2.5, "threshold_rate": 0.02}, "jumprelu"),
    "matryoshka": (
        {"architecture": "matryoshka", "k": 3, "group_sizes": [4, 12, 16]},
        "jumprelu",
    ),
    "jumprelu": ({"architecture": "jumprelu", "l0_coef": 0.1}, "jumprelu"),
    "gated": ({"architecture": "gated", "l1_coef": 0.5}, "gated"),
    "gated_no_b_dec_in": ({"architecture": "gated", "apply_b_dec_to_input": False}, "gated"),
    "relu_transcoder": ({"architecture": "relu", **TC}, "transcoder"),
    "jumprelu_transcoder": ({"architecture": "jumprelu", **TC}, "jumprelu_transcoder"),
    "batchtopk_transcoder": ({"architecture": "batchtopk", "k": 3, **TC}, "jumprelu_transcoder"),
    "matryoshka_transcoder": ({"architecture": "matryoshka", "k": 3, **TC}, "jumprelu_transcoder"),
    "relu_skip_transcoder": ({"architecture": "relu", **SKIP}, "skip_transcoder"),
    "jumprelu_skip_transcoder": ({"architecture": "jumprelu", **SKIP}, "jumprelu_skip_transcoder"),
    "batchtopk_skip_transcoder": (
        {"architecture": "batchtopk", "k": 3, **SKIP},
        "jumprelu_skip_transcoder",
    ),
}


def random_sae(fields: dict, seed: int = 0, dtype: torch.dtype = torch.float32) -> SAE:
    """A tiny SAE with every parameter moved off its initial value: biases, thresholds (an
    estimated inference threshold for the BatchTopK family), decoder norms spread."""
    torch.manual_seed(seed)
    sae = make_sae({"d_in": 16, "d_sae": 32, **fields}).to(dtype)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        sae.W_dec.mul_(torch.rand(32, 1, dtype=dtype) * 1.5 + 0.5)
        if sae.cfg.name in ("batchtopk", "matryoshka"):
            sae.threshold.fill_(0.25)
    return sae.eval()


def _x(sae: SAE) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    return (torch.randn(20, sae.cfg.d_in, generator=g) * 1.5 + 0.3).to(sae.W_enc.dtype)


def _same_state(a: SAE, b: SAE) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_through_saelens_is_bitwise(name, tmp_path):
    """saescope -> SAELens folder -> load: the same class, config, and parameters and buffers
    bit for bit."""
    fields, arch = CASES[name]
    sae = random_sae(fields)
    saescope.save(sae, tmp_path / "lens", format="saelens")
    assert detect(tmp_path / "lens") == "saelens"
    assert json.loads((tmp_path / "lens" / "cfg.json").read_text())["architecture"] == arch
    back = load(tmp_path / "lens")
    assert type(back) is type(sae) and back.cfg == sae.cfg and _same_state(back, sae)
    x = _x(sae)
    assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back(x), sae(x))


@pytest.mark.parametrize("name", CASES)
def test_convert_saescope_folder_to_saelens_and_back(name, tmp_path):
    """convert between the folders: saescope's own -> SAELens -> saescope's own gives what
    saescope's own folder gives (bit for bit; a JumpReLU's log-threshold is as saescope's own
    format keeps it, which stores exp of it)."""
    sae = random_sae(CASES[name][0])
    sae.save(tmp_path / "own")
    own = SAE.load(tmp_path / "own")
    convert(tmp_path / "own", tmp_path / "lens", "saelens")
    convert(tmp_path / "lens", tmp_path / "again", "saescope")
    again = SAE.load(tmp_path / "again")
    assert again.cfg == sae.cfg
    if sae.cfg.name != "jumprelu":
        assert _same_state(again, own)
    else:  # saescope's own files hold exp(log_threshold): log of it is within an ulp
        torch.testing.assert_close(again.log_threshold, own.log_threshold, rtol=1e-6, atol=0)
        assert all(
            torch.equal(v, own.state_dict()[k])
            for k, v in again.state_dict().items()
            if k != "log_threshold"
        )


def test_float64_round_trip_is_bitwise(tmp_path):
    sae = random_sae(CASES["jumprelu"][0], dtype=torch.float64)
    saescope.save(sae, tmp_path / "lens", format="saelens")
    back = load_saelens(tmp_path / "lens")
    assert back.W_enc.dtype == torch.float64 and _same_state(back, sae)


@pytest.mark.parametrize("name", CASES)
def test_saelens_part_alone_gives_the_numbers(name, tmp_path):
    """Without saescope's metadata the folder is read as SAELens reads it (the fixture-checked
    path): the same encode/decode numbers, in eval mode."""
    sae = random_sae(CASES[name][0], seed=1)
    save(sae, tmp_path / "lens", "saelens")
    cfg_file = tmp_path / "lens" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    assert "format_version" not in cfg and cfg["metadata"]["sae_lens_version"].startswith("6.")
    del cfg["metadata"]["saescope"]
    cfg_file.write_text(json.dumps(cfg))
    plain = load_saelens(tmp_path / "lens")
    x = _x(sae)
    torch.testing.assert_close(plain.encode(x), sae.encode(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(plain(x), sae(x), rtol=1e-6, atol=1e-6)


def test_saelens_tensors_are_saelens_names(tmp_path):
    """Only the tensors SAELens's class has (its load_state_dict is strict)."""
    want = {
        "standard": {"W_enc", "W_dec", "b_enc", "b_dec"},
        "jumprelu": {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"},
        "gated": {"W_enc", "W_dec", "b_dec", "b_gate", "b_mag", "r_mag"},
    }
    for name, arch in (("relu", "standard"), ("batchtopk", "jumprelu"), ("gated", "gated")):
        save(random_sae(CASES[name][0]), tmp_path / name, "saelens")
        assert set(load_file(tmp_path / name / "sae_weights.safetensors")) == want[arch]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"architecture": "topk", "k": 4, **TC}, "no topk transcoder"),
        ({"architecture": "gated", **TC}, "no gated transcoder"),
        ({"architecture": "topk", "k": 4, **SKIP}, "no topk skip connection"),
        ({"architecture": "relu", "skip_connection": True}, "do not pre-centre"),
    ],
)
def test_inexpressible_refused_in_one_line(fields, named, tmp_path):
    sae = random_sae(fields)
    with pytest.raises(FormatError, match=named) as e:
        save(sae, tmp_path / "lens", "saelens")
    assert "\n" not in str(e.value) and not (tmp_path / "lens").exists()


def test_unestimated_threshold_refused(tmp_path):
    sae = make_sae({"architecture": "batchtopk", "d_in": 16, "d_sae": 32, "k": 3})
    with pytest.raises(FormatError, match="no inference threshold yet"):
        saelens_architecture(sae)


def test_unknown_format_lists_the_known(tmp_path):
    with pytest.raises(FormatError, match="unknown format 'onnx'; saescope writes saescope"):
        save(random_sae(CASES["relu"][0]), tmp_path / "x", "onnx")
    assert set(FORMATS) >= {"saescope", "saelens"}


def test_convert_refuses_writing_over_its_source(tmp_path):
    random_sae(CASES["relu"][0]).save(tmp_path / "own")
    with pytest.raises(FormatError, match="is the source folder"):
        convert(tmp_path / "own", tmp_path / "own", "saelens")


def test_model_and_hook_carried_across(tmp_path):
    """A run's recorded data (model, hook, target) -> SAELens's metadata -> saescope again."""
    sae = random_sae(CASES["relu_transcoder"][0])
    data = {"kind": "model", "model": "glassllm", "hook": "blocks.1", "target": "blocks.1.mlp"}
    sae.save(tmp_path / "own", {"data": {**data, "context": 64}})
    convert(tmp_path / "own", tmp_path / "lens", "saelens")
    want = {"model_name": "glassllm", "hook_name": "blocks.1", "hook_name_out": "blocks.1.mlp"}
    got = metadata(tmp_path / "lens")
    assert {k: got[k] for k in want} == want and got["context_size"] == 64
    convert(tmp_path / "lens", tmp_path / "again", "saescope")
    assert {k: metadata(tmp_path / "again")[k] for k in want} == want


def test_hook_given_where_the_source_names_none(tmp_path):
    random_sae(CASES["topk"][0]).save(tmp_path / "own")
    convert(tmp_path / "own", tmp_path / "lens", "saelens", hook="blocks.0")
    assert metadata(tmp_path / "lens")["hook_name"] == "blocks.0"


def test_saelens_fixture_through_saescope_and_back(tmp_path):
    """A folder SAELens wrote -> saescope -> SAELens: the recorded outputs still hold, and
    the hook metadata comes through."""
    for name in ("topk_rescale", "gated", "jumprelu_transcoder", "matryoshka_batchtopk"):
        convert(SAELENS / name, tmp_path / name / "own", "saescope")
        convert(tmp_path / name / "own", tmp_path / name / "lens", "saelens")
        want = load_file(SAELENS / name / "expected.safetensors")
        with torch.no_grad():
            out = load_saelens(tmp_path / name / "lens")(want["x"])
        torch.testing.assert_close(out, want["out"], rtol=1e-4, atol=1e-5)
        assert (
            metadata(tmp_path / name / "lens")["hook_name"] == metadata(SAELENS / name)["hook_name"]
        )


def test_stale_saescope_config_ignored(tmp_path):
    """SAELens-side edits (here k) win over saescope's recorded config, which no longer
    agrees with the file."""
    save(random_sae(CASES["topk"][0]), tmp_path / "lens", "saelens")
    cfg_file = tmp_path / "lens" / "cfg.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["k"] = 3
    cfg_file.write_text(json.dumps(cfg))
    assert load_saelens(tmp_path / "lens").cfg.k == 3


def test_exact_log_threshold_only_while_it_matches(tmp_path):
    sae = random_sae(CASES["jumprelu"][0])
    save(sae, tmp_path / "lens", "saelens")
    file = tmp_path / "lens" / "sae_weights.safetensors"
    w = load_file(file)
    w["threshold"] = w["threshold"] * 2
    save_file(w, file)  # SAELens-style rewrite: the header's record is gone or stale
    back = load_saelens(tmp_path / "lens")
    torch.testing.assert_close(back.threshold, sae.threshold * 2)


def test_hook_z_round_trip(tmp_path):
    """SAELens's hook_z SAE -> saescope (on the flattened heads) -> SAELens: still hook_z at
    the same hook, with SAELens's recorded outputs."""
    folder = SAELENS / "standard_hook_z"
    convert(folder, tmp_path / "own", "saescope")
    assert metadata(tmp_path / "own")["reshape_activations"] == "hook_z"
    convert(tmp_path / "own", tmp_path / "lens", "saelens")
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["reshape_activations"] == "hook_z"
    assert cfg["metadata"]["hook_name"] == "blocks.1.attn.hook_z"
    want = load_file(folder / "expected.safetensors")  # x, out: (8, 4 heads, 4)
    with torch.no_grad():
        out = load_saelens(tmp_path / "lens")(want["x"].flatten(-2))
    torch.testing.assert_close(out, want["out"].flatten(-2), rtol=1e-4, atol=1e-5)


def test_hook_z_needs_a_z_hook(tmp_path):
    sae = random_sae(CASES["relu"][0])
    meta = {"hook_name": "blocks.1.hook_resid_post", "reshape_activations": "hook_z"}
    with pytest.raises(FormatError, match="ends in _z"):
        save(sae, tmp_path / "lens", "saelens", meta)


DICT_CASES = [n for n, (f, _) in CASES.items() if "d_out" not in f]


@pytest.mark.parametrize("name", DICT_CASES)
def test_round_trip_through_dictionary_learning_is_bitwise(name, tmp_path):
    """The registry's other writer, through the same `save(format=)` and `load`."""
    sae = random_sae(CASES[name][0])
    if sae.cfg.name in ("batchtopk", "matryoshka") and not float(sae.cfg.k).is_integer():
        with pytest.raises(FormatError, match="whole k"):  # dictionary_learning stores an int
            save(sae, tmp_path / "dl", "dictionary_learning")
        return
    save(sae, tmp_path / "dl", "dictionary_learning")
    assert detect(tmp_path / "dl") == "dictionary_learning"
    back = load(tmp_path / "dl")
    assert type(back) is type(sae) and back.cfg == sae.cfg and _same_state(back, sae)


def test_transcoders_refused_by_dictionary_learning(tmp_path):
    with pytest.raises(FormatError, match="activation_dim") as e:
        save(random_sae(CASES["relu_transcoder"][0]), tmp_path / "dl", "dictionary_learning")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "meta",
    [
        {"hook_name": "blocks.1.attn.hook_z", "reshape_activations": "hook_z"},
        {"hook_name": "blocks.1.attn.hook_q", "hook_head_index": 2, "prepend_bos": False},
    ],
)
@pytest.mark.parametrize("via", ["saescope", "sparsify", "dictionary_learning"])
def test_saelens_metadata_survives_another_format(via, meta, tmp_path):
    """SAELens -> another format -> SAELens keeps what SAELens's metadata says about the
    activations (the hook_z reshape, the head, BOS), not only the model and hook."""
    meta = {"model_name": "glassllm", "context_size": 64, **meta}
    save(random_sae(CASES["topk"][0]), tmp_path / "lens", "saelens", meta)
    convert(tmp_path / "lens", tmp_path / "via", via)
    convert(tmp_path / "via", tmp_path / "back", "saelens")
    got = metadata(tmp_path / "back")
    assert {k: got.get(k) for k in meta} == meta


@pytest.mark.parametrize(
    "first, second",
    [("saelens", "dictionary_learning"), ("saescope", "dictionary_learning"),
     ("saelens", "sparsify"), ("sparsify", "saelens")],
)  # fmt: skip
def test_writing_over_another_formats_sae_refused(first, second, tmp_path):
    """The old files would stay beside the new ones and `load` would find the old SAE (or
    misread the mix): a folder holding an SAE in another format is refused, in one line."""
    old, new = random_sae(CASES["topk"][0], seed=0), random_sae(CASES["topk"][0], seed=1)
    save(old, tmp_path / "out", first)
    with pytest.raises(FormatError, match=f"already holds a {first} SAE") as e:
        save(new, tmp_path / "out", second)
    assert "\n" not in str(e.value)
    new.save(tmp_path / "new")
    with pytest.raises(FormatError, match=f"already holds a {first} SAE"):
        convert(tmp_path / "new", tmp_path / "out", second)
    save(new, tmp_path / "out", first)  # the same format: its files are replaced
    assert torch.equal(load(tmp_path / "out").W_dec, new.W_dec)
