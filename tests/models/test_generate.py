"""Generation: greedy and seeded sampling give the same tokens with the key/value cache as
without (glassllm, the Llama port, SmolLM2); top-p and the end-of-text token; a Hugging Face
folder's own generate with exactly the settings given; block hooks see one new position per
cached step; the one-line errors."""

import math

import pytest
import torch
from torch import nn

from saescope.errors import ConfigError, InputError
from saescope.models import load_model
from saescope.models.generate import generate
from saescope.models.hooks import attached
from tests.models.test_kv import tiny_llama

PROMPTS = ["Alice was beginning to get very", "The Queen turned crimson with fury"]


@pytest.fixture(scope="module")
def prompts(glass):
    """Two glassllm prompts cut to the same length: (2, T)."""
    _, tok = glass
    rows = [tok.encode(p) for p in PROMPTS]
    t = min(len(r) for r in rows)
    return torch.tensor([r[:t] for r in rows])


def _argmax_loop(model, ids, new):
    """The plainest greedy decoding: the whole sequence through the model each step."""
    with torch.no_grad():
        for _ in range(new):
            out = model(ids)
            logits = out if isinstance(out, torch.Tensor) else out.logits
            ids = torch.cat((ids, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return ids


def test_greedy_cached_equals_uncached_and_the_plain_loop(glass, prompts):
    model, _ = glass
    cached = generate(model, prompts, 20)
    assert cached.shape == (2, prompts.shape[1] + 20)
    assert torch.equal(cached[:, : prompts.shape[1]], prompts)
    assert torch.equal(cached, generate(model, prompts, 20, use_cache=False))
    assert torch.equal(cached, _argmax_loop(model, prompts, 20))
    assert not torch.equal(cached[0], cached[1])  # the rows are generated each from its own


def test_the_llama_port_generates_the_same_with_and_without_the_cache():
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, 6))
    assert torch.equal(generate(model, ids, 20), generate(model, ids, 20, use_cache=False))
    a = generate(model, ids, 20, temperature=1.0, seed=4)
    assert torch.equal(a, generate(model, ids, 20, temperature=1.0, seed=4, use_cache=False))


def test_a_seed_reproduces_the_samples_cached_or_not(glass, prompts):
    model, _ = glass
    ids = prompts[:1].repeat(4, 1)  # one prompt, four samples
    state = torch.get_rng_state()
    a = generate(model, ids, 20, temperature=1.0, top_p=0.9, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is untouched
    assert torch.equal(a, generate(model, ids, 20, temperature=1.0, top_p=0.9, seed=7))
    assert torch.equal(
        a, generate(model, ids, 20, temperature=1.0, top_p=0.9, seed=7, use_cache=False)
    )
    assert len({tuple(row.tolist()) for row in a}) > 1  # samples differ from one another
    assert not torch.equal(a, generate(model, ids, 20, temperature=1.0, top_p=0.9, seed=8))
    assert not torch.equal(a, generate(model, ids, 20))  # not greedy


def test_a_tiny_top_p_or_temperature_is_greedy(glass, prompts):
    model, _ = glass
    greedy = generate(model, prompts, 20)
    assert torch.equal(generate(model, prompts, 20, temperature=1.5, top_p=1e-6, seed=1), greedy)
    assert torch.equal(generate(model, prompts, 20, temperature=1e-4, seed=1), greedy)


def test_top_p_samples_only_from_the_nucleus(glass, prompts):
    """Every sampled token lies in the smallest set of tokens holding top_p of the mass."""
    model, _ = glass
    out = generate(model, prompts[:1].repeat(8, 1), 12, temperature=1.0, top_p=0.5, seed=3)
    t = prompts.shape[1]
    with torch.no_grad():
        probs = torch.softmax(model(out[:, :-1])[:, t - 1 :], dim=-1)  # (8, 12, vocab)
    chosen = probs.gather(-1, out[:, t:, None]).squeeze(-1)
    above = (probs * (probs > chosen[..., None])).sum(-1)  # mass ranked above each choice
    assert (above < 0.5 + 1e-6).all()
    assert (chosen < probs.max(-1).values).any()  # not only the top token


def test_the_end_of_text_token_stops_a_row(glass, prompts):
    model, _ = glass
    greedy = generate(model, prompts, 20)
    t = prompts.shape[1]
    eos = int(greedy[0, t + 3])
    out = generate(model, prompts, 20, eos_token_id=eos)
    for row, full in zip(out, greedy, strict=True):
        hits = (full[t:] == eos).nonzero()
        if len(hits):  # eos, then only eos
            first = t + int(hits[0])
            assert torch.equal(row[: first + 1], full[: first + 1])
            assert (row[first:] == eos).all()
        else:
            assert torch.equal(row, full[: len(row)])
    if (greedy[1, t:] == eos).any():  # both rows stopped: generation ends early
        assert out.shape[1] < greedy.shape[1]
    assert torch.equal(generate(model, prompts[:1], 20, eos_token_id=eos), greedy[:1, : t + 4])
    assert torch.equal(generate(model, prompts, 0), prompts)


def test_block_hooks_see_one_new_position_per_cached_step(glass, prompts):
    model, _ = glass
    shapes = []
    with attached(model, {"layers.1": lambda x, _c: shapes.append(tuple(x.shape))}):
        generate(model, prompts, 4)
    assert shapes == [(2, prompts.shape[1], 128)] + [(2, 1, 128)] * 3
    shapes.clear()
    with attached(model, {"layers.1": lambda x, _c: shapes.append(tuple(x.shape))}):
        generate(model, prompts, 3, use_cache=False)
    assert [s[1] for s in shapes] == [prompts.shape[1] + i for i in range(3)]


def test_bad_input_gets_one_line_errors(glass, prompts):
    model, _ = glass
    long = {"ids": torch.zeros(1, 129, dtype=torch.long)}
    bad = [
        (InputError, "prompt of 129 tokens is longer than the model's context of 128", long),
        (
            InputError,
            "120 tokens \\+ 10 new tokens exceeds the model's context of 128 positions; "
            "at most 8 new tokens fit",
            {"ids": long["ids"][:, :120], "max_new_tokens": 10},
        ),
        (ConfigError, "max_new_tokens must be 0 or more, got -1", {"max_new_tokens": -1}),
        (ConfigError, "temperature must be finite and >= 0", {"temperature": -0.5}),
        (ConfigError, "temperature must be finite", {"temperature": math.inf}),
        (ConfigError, "temperature must be finite", {"temperature": math.nan}),
        (ConfigError, r"top_p must be in \(0, 1\]", {"top_p": 0.0}),
        (ConfigError, r"top_p must be in \(0, 1\]", {"top_p": 1.5}),
        (ConfigError, r"top_p must be in \(0, 1\]", {"top_p": math.nan}),
        (InputError, "empty prompt", {"ids": torch.zeros(2, 0, dtype=torch.long)}),
        (InputError, r"a single prompt is ids\[None\]", {"ids": prompts[0]}),
        (InputError, "tensor of token ids", {"ids": prompts.float()}),
    ]
    for error, message, given in bad:
        with pytest.raises(error, match=message) as info:
            generate(model, **{"ids": prompts, "max_new_tokens": 5, **given})
        assert "\n" not in str(info.value)


def test_a_module_that_is_no_causal_lm_is_refused():
    with pytest.raises(ConfigError, match="Linear is not a causal LM"):
        generate(nn.Linear(4, 4), torch.zeros(1, 3, dtype=torch.long), 2)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random Llama saved by transformers with a word-level tokenizer; its
    generation_config.json asks for sampling with top-k 5, a repetition penalty and an
    end-of-text token, none of which `generate` may use."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=48,
        bos_token_id=None,
        pad_token_id=None,
        eos_token_id=None,
    )
    model = transformers.LlamaForCausalLM(cfg)
    ids = torch.tensor([[3, 4, 5, 6]])
    first = int(_argmax_loop(model.eval(), ids, 1)[0, -1])  # the folder's eos: greedy's first
    gen = model.generation_config
    gen.do_sample, gen.top_k, gen.temperature, gen.repetition_penalty = True, 5, 0.5, 3.0
    gen.eos_token_id = first
    model.save_pretrained(folder)
    vocab = {f"t{i}": i for i in range(64)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_hugging_face_folder_generates_with_its_own_generate(hf_folder):
    model, _ = load_model(hf_folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([[3, 4, 5, 6], [3, 4, 5, 6]])
    greedy = generate(model, ids, 12)
    assert greedy.shape == (2, 16)  # the folder's end-of-text token, greedy's first, is not used
    assert torch.equal(greedy, _argmax_loop(model, ids, 12))  # no repetition penalty either
    assert torch.equal(greedy, generate(model, ids, 12, use_cache=False))
    state = torch.get_rng_state()
    a = generate(model, ids, 12, temperature=1.0, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, generate(model, ids, 12, temperature=1.0, seed=5, use_cache=False))
    assert not torch.equal(a, greedy) and not torch.equal(a[0], a[1])
    assert torch.equal(generate(model, ids, 12, temperature=1.0, top_p=1e-6, seed=5), greedy)
    stop = generate(model, ids, 12, eos_token_id=int(greedy[0, 4]))
    assert torch.equal(stop, greedy[:, :5])
    with pytest.raises(InputError, match="at most 44 new tokens fit"):
        generate(model, ids, 45)


@pytest.mark.slow
def test_an_encoder_is_refused():
    model, _ = load_model("minilm")
    with pytest.raises(ConfigError, match="BertModel is not a causal LM"):
        generate(model, torch.tensor([[101, 2000, 102]]), 3)


@pytest.mark.slow
def test_smollm2_greedy_is_the_same_with_and_without_the_cache():
    model, tok = load_model("smollm2")
    ids = torch.tensor([tok.encode("The capital of France is")])
    cached = generate(model, ids, 20)
    assert torch.equal(cached, generate(model, ids, 20, use_cache=False))
    assert len(set(cached[0, ids.shape[1] :].tolist())) > 3  # a continuation, not one token
