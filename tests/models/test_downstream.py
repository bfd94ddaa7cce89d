"""Splicing into glassllm: CE loss recovered and KL behave at their ends and in between; the
batched, chunked computation against a plain reference; its memory bound (batch sizes, chunk
sizes, and which logits are alive at each forward pass)."""

import copy
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saescope import metrics
from saescope.errors import ConfigError
from saescope.models import downstream as ds
from saescope.models import load_model
from saescope.models.downstream import downstream
from saescope.models.harvest import pack
from saescope.models.hooks import spliced

TEXT = (
    "'Would you tell me, please, which way I ought to go from here?' 'That depends a good deal "
    "on where you want to get to,' said the Cat. 'I don't much care where--' said Alice. "
    "'Then it doesn't matter which way you go,' said the Cat. "
) * 6


@pytest.fixture(scope="module")
def glass():
    model, tok = load_model("glassllm")
    return model, pack(tok.encode(TEXT), 48)


def test_identity_recovers_everything_and_zeros_nothing(glass):
    model, ctx = glass
    same = downstream(model, ctx, "layers.2", lambda a: a)
    assert same["ce_spliced"] == same["ce_clean"] and same["kl_div"] == 0.0
    assert same["ce_loss_recovered"] == 1.0
    assert same["ce_zero"] > same["ce_clean"]  # in domain, the layer matters
    zero = downstream(model, ctx, "layers.2", torch.zeros_like)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    noisy = downstream(model, ctx, "layers.2", lambda a: a + 0.5 * torch.randn_like(a))
    assert 0.0 < noisy["ce_loss_recovered"] < 1.0 and noisy["kl_div"] > 0.0


def test_substituting_a_module_by_its_input(glass):
    model, ctx = glass
    twin = copy.deepcopy(model.layers[1].mlp)  # a perfect "transcoder"
    out = downstream(model, ctx, "layers.1.mlp:in", twin, whole_module=True)
    assert out["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert out["kl_div"] == pytest.approx(0.0, abs=1e-6)
    wrong = downstream(model, ctx, "layers.1.mlp:in", lambda x: x, whole_module=True)
    assert wrong["kl_div"] > 0.01  # the MLP's input passed off as its output


def test_replacing_a_module_input_keeps_the_module(glass):
    """An SAE on `M:in` (no transcoder) reconstructs M's input; M then runs on it."""
    model, ctx = glass
    same = downstream(model, ctx, "layers.0.mlp:in", lambda x: x, keep_first=True)
    assert same["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-6)
    assert same["kl_div"] == pytest.approx(0.0, abs=1e-7)
    half = downstream(model, ctx, "layers.0.mlp:in", lambda x: 0.5 * x, keep_first=True)
    assert 0 < half["kl_div"] and half["ce_spliced"] != half["ce_clean"]


def test_ce_loss_recovered_formula():
    assert metrics.ce_loss_recovered(2.0, 2.5, 4.0) == pytest.approx(0.75)
    assert metrics.ce_loss_recovered(2.0, 2.0, 2.0) != metrics.ce_loss_recovered(2.0, 2.0, 2.0)


# ----- chunked computation: the same numbers, bounded memory ------------------------------------


def _wobble(a):
    """A deterministic, imperfect reconstruction (elementwise, so batching cannot change it)."""
    return 0.8 * a + 0.2 * torch.sin(3 * a)


def _plain_logits(model, ids):
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@torch.no_grad()
def _reference(model, ctx, hook, reconstruct, keep_first):
    """The straightforward computation: every context at once, all three logits held, float64."""
    start = 1 if keep_first else 0
    clean = _plain_logits(model, ctx)[:, start:-1].double()
    with spliced(model, {hook: reconstruct}, keep_first):
        patched = _plain_logits(model, ctx)[:, start:-1].double()
    with spliced(model, {hook: torch.zeros_like}, keep_first):
        zero = _plain_logits(model, ctx)[:, start:-1].double()
    targets = ctx[:, start + 1 :].reshape(-1)
    n = targets.numel()

    def ce(logits):
        return float(F.cross_entropy(logits.reshape(n, -1), targets, reduction="sum")) / n

    logp, logq = F.log_softmax(clean, -1), F.log_softmax(patched, -1)
    kl = float((logp.exp() * (logp - logq)).sum()) / n
    return {"ce_clean": ce(clean), "ce_spliced": ce(patched), "ce_zero": ce(zero), "kl_div": kl}


def _close(got, want, rel):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=rel), key
    recovered = metrics.ce_loss_recovered(want["ce_clean"], want["ce_spliced"], want["ce_zero"])
    assert got["ce_loss_recovered"] == pytest.approx(recovered, rel=rel)


def test_batches_and_chunks_give_the_plain_computations_numbers(glass):
    model, ctx = glass
    vocab = _plain_logits(model, ctx[:1, :2]).shape[-1]
    want = {kf: _reference(model, ctx, "layers.2", _wobble, kf) for kf in (False, True)}
    assert want[True]["kl_div"] > 1e-3 and want[True]["ce_spliced"] != want[True]["ce_clean"]
    # two contexts per pass, one position per block; a batch that does not divide the contexts,
    # runs of 3 positions and a short tail; blocks of 2 whole contexts in batches of 5 (one
    # context left over); everything in one pass and one block
    for batch_size, chunk, keep_first in (
        (2, 1, False),
        (4, 3 * vocab + 7, True),
        (5, 2 * 46 * vocab, True),
        (99, 2**40, True),
    ):
        got = downstream(model, ctx, "layers.2", _wobble, batch_size, keep_first, chunk=chunk)
        _close(got, want[keep_first], rel=1e-5)
    auto = downstream(model, ctx, "layers.2", _wobble, keep_first=True)  # batch size automatic
    _close(auto, want[True], rel=1e-5)


class _HalfLogits(nn.Module):
    """The model, its logits in bfloat16 (a model run in half precision)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, ids):
        return self.inner(ids).bfloat16()


def test_half_precision_logits_are_scored_in_float32_chunks(glass):
    model, ctx = glass
    half, ctx = _HalfLogits(model), ctx[:4]
    want = _reference(half, ctx, "inner.layers.2", _wobble, True)
    got = downstream(half, ctx, "inner.layers.2", _wobble, 3, True, chunk=1000)
    _close(got, want, rel=1e-5)


class _Recording(nn.Module):
    """The model, recording each output's shape and, as each pass starts, how many outputs of
    earlier passes are still alive (weak references: a view of an output keeps it alive)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.shapes: list[tuple[int, ...]] = []
        self.alive: list[int] = []
        self._outputs: list[weakref.ref] = []

    def forward(self, ids):
        self.alive.append(sum(ref() is not None for ref in self._outputs))
        out = self.inner(ids)
        self._outputs.append(weakref.ref(out))
        self.shapes.append(tuple(out.shape))
        return out


def test_memory_is_bounded_by_the_batch_and_the_chunk(glass, monkeypatch):
    model, ctx = glass
    ctx = ctx[:6]  # batches of 4: one full, one of 2
    rec = _Recording(model)
    vocab = _plain_logits(model, ctx[:1, :2]).shape[-1]
    chunk = 5 * vocab + 3  # 5 positions at a time
    scored = []
    log_softmax = ds._log_softmax

    def recording_log_softmax(logits):
        scored.append(tuple(logits.shape))
        return log_softmax(logits)

    monkeypatch.setattr(ds, "_log_softmax", recording_log_softmax)
    batch_size = 4
    n_batches = -(-ctx.shape[0] // batch_size)
    downstream(rec, ctx, "inner.layers.2", _wobble, batch_size, keep_first=True, chunk=chunk)
    assert len(rec.shapes) == 3 * n_batches
    assert max(s[0] for s in rec.shapes) == batch_size  # no pass sees more contexts
    # clean pass: nothing else alive; spliced pass: only the clean log-probabilities (the
    # clean output, overwritten in place); zero-ablated pass: nothing; and so on per batch
    assert rec.alive == [0, 1, 0] * n_batches
    assert scored and all(s[:-1] in ((1, 5), (1, 1)) and s[-1] == vocab for s in scored)
    # every prediction scored once per pass: clean, spliced, zero
    assert sum(s[1] for s in scored) == 3 * ctx.shape[0] * (ctx.shape[1] - 2)
    scored.clear()  # now blocks of 3 whole contexts (of 46 predictions) in batches of 4
    downstream(rec, ctx, "inner.layers.2", _wobble, 4, keep_first=True, chunk=3 * 46 * vocab)
    assert {s for s in scored} == {(3, 46, vocab), (1, 46, vocab)} | (
        {(ctx.shape[0] % 4, 46, vocab)} if ctx.shape[0] % 4 else set()
    )


def test_a_batch_size_below_one_is_refused(glass):
    model, ctx = glass
    with pytest.raises(ConfigError, match="--batch-size of at least 1"):
        downstream(model, ctx, "layers.2", _wobble, batch_size=0)


def test_the_automatic_batch_keeps_a_pass_within_the_logits_budget():
    assert ds.batch_size_for(128, 49_152) == 5  # SmolLM2: 5 x 25 MiB of logits per pass
    assert ds.batch_size_for(128, 1024) == ds.MAX_BATCH == 32  # glassllm: capped
    assert ds.batch_size_for(4096, 200_000) == 1  # never below one context
    for context, vocab in ((128, 49_152), (48, 1024), (1000, 32_000)):
        b = ds.batch_size_for(context, vocab)
        assert b * context * vocab * 4 <= ds.LOGITS_BUDGET
        assert b == ds.MAX_BATCH or (b + 1) * context * vocab * 4 > ds.LOGITS_BUDGET
