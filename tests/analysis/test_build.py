"""IndexState: one batch's windows against the activations they come from (cut at the
context's ends, 0 at rows left out), and a checkpoint read back equal, or not at all for
another SAE or config."""

import torch

from saescope.analysis import IndexConfig
from saescope.analysis.build import Batch, IndexState

T, D = 6, 5


def _batch(first: int, contexts: int, drop: set[tuple[int, int]]) -> Batch:
    ctx = torch.arange(first, first + contexts).repeat_interleave(T - 1)
    pos = torch.arange(1, T).repeat(contexts)
    keep = torch.tensor([(int(c), int(p)) not in drop for c, p in zip(ctx, pos, strict=True)])
    return Batch(torch.zeros(int(keep.sum()), 3), ctx[keep], pos[keep], first, contexts)


def test_windows_are_the_activations_around_each_example():
    cfg = IndexConfig(top=4, before=2, after=1, buckets=4, samples=2, cofire_tokens=8)
    state = IndexState(D, T, cfg)
    b = _batch(first=10, contexts=3, drop={(11, 3)})
    torch.manual_seed(0)
    f = torch.relu(torch.randn(b.ctx.numel(), D))
    state.add(f, b)
    grid = torch.zeros(13, T, D)
    grid[b.ctx, b.pos] = f
    for feat in range(D):
        for slot in range(cfg.top):
            key = int(state.top.key[feat, slot])
            if key < 0:
                continue
            c, p = divmod(key, T)
            want = [float(grid[c, q, feat]) if 0 <= q < T else 0.0 for q in range(p - 2, p + 2)]
            assert state.top.acts[feat, slot].tolist() == want
            assert float(state.top.score[feat, slot]) == float(grid[c, p, feat])
    assert state.tokens == f.shape[0] and state.batches == 1


def test_a_checkpoint_reads_back_equal_only_for_its_own_build(tmp_path):
    cfg = IndexConfig(top=3, buckets=4, samples=2, cofire_tokens=16)
    state = IndexState(D, T, cfg)
    b = _batch(first=0, contexts=4, drop=set())
    torch.manual_seed(1)
    state.add(torch.relu(torch.randn(b.ctx.numel(), D)), b)
    meta = {"sae": "abc", "source": {"kind": "lm"}, "config": cfg.stored()}
    path = tmp_path / "ckpt.safetensors"
    state.save(path, meta)
    back = IndexState.resume(path, meta, D, T, cfg)
    assert back.batches == 1 and back.tokens == state.tokens
    for k, v in {**state.tensors(), **state.sample.state()}.items():
        assert torch.equal(v, {**back.tensors(), **back.sample.state()}[k]), k
    other = IndexState.resume(path, {**meta, "sae": "xyz"}, D, T, cfg)
    assert other.batches == 0 and (other.top.key == -1).all()
    path.write_bytes(b"not a checkpoint")
    assert IndexState.resume(path, meta, D, T, cfg).batches == 0
