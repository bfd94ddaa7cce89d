"""What a feature's page says about other features and tokens, computed once at the end of a
build, block by block (memory bounded by a block, not d_sae^2):

- `neighbours`: the nearest decoder directions, by cosine of the decoder rows W_dec[i];
- `cofiring`: the features that fire with it most, on the sampled tokens' active sets: score
  = |both fire| / sqrt(|i fires| |j fires|) (the Ochiai coefficient, the cosine of the two
  binary firing vectors over the sample; 1: they always fire together);
- `direct_logits`: each feature's decoder row through the final norm's scale and the
  unembedding, (W_dec[i] * gamma) @ W_U, its top and bottom tokens.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from saescope.errors import ConfigError
from saescope.models.lm import unembedding

BLOCK = 1024
"""Features per block of the (block, d_sae) and (block, vocab) products."""

Ranked = tuple[Tensor, Tensor]
"""(ids (d_sae, n) int64, -1: none; values (d_sae, n) float32), best first."""


def _topk_rows(m: Tensor, n: int, largest: bool = True) -> Ranked:
    n = min(n, m.shape[1])
    top = torch.topk(m, n, dim=1, largest=largest)
    ids = torch.where(torch.isfinite(top.values), top.indices, -1)
    return ids, top.values.float()


def neighbours(w_dec: Tensor, n: int) -> Ranked:
    """Each feature's n nearest decoder directions (itself excluded) and their cosines."""
    w = w_dec.detach().float()
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    ids, vals = [], []
    for a in range(0, w.shape[0], BLOCK):
        sims = w[a : a + BLOCK] @ w.T  # (block, d_sae)
        rows = torch.arange(sims.shape[0])
        sims[rows, a + rows] = -torch.inf
        i, v = _topk_rows(sims, n)
        ids.append(i)
        vals.append(v)
    return torch.cat(ids), torch.cat(vals)


def cofiring(feats: Tensor, d_sae: int, n: int) -> Ranked:
    """feats (m, width) int: sampled tokens' active features (-1 pads). Each feature's n most
    co-firing features (score > 0 only; see the module's docstring)."""
    rows, cols = (feats >= 0).nonzero(as_tuple=True)
    f = feats[rows, cols].long().numpy()
    a = sp.csr_matrix(
        (np.ones(f.size, np.float32), (rows.numpy(), f)), shape=(feats.shape[0], d_sae)
    )
    at = a.T.tocsr()  # (d_sae, m)
    own = torch.from_numpy(np.asarray(a.sum(0)).ravel().astype(np.float32))  # (d_sae,)
    ids, vals = [], []
    for s in range(0, d_sae, BLOCK):
        both = torch.from_numpy((at[s : s + BLOCK] @ a).toarray())  # (block, d_sae) counts
        score = both / (own[s : s + both.shape[0], None] * own[None]).sqrt().clamp_min(1e-12)
        score[both == 0] = -torch.inf
        r = torch.arange(score.shape[0])
        score[r, s + r] = -torch.inf
        i, v = _topk_rows(score, n)
        ids.append(i)
        vals.append(v)
    return torch.cat(ids), torch.cat(vals)


def direct_logits(w_dec: Tensor, model: nn.Module, n: int) -> tuple[Ranked, Ranked] | None:
    """(top, bottom): each feature's n tokens of largest and of smallest direct logit effect;
    None for a model without an unembedding or an SAE that does not write its residual width."""
    try:
        gamma, w_u = unembedding(model)
    except ConfigError:
        return None
    w = w_dec.detach().float()
    if w.shape[1] != gamma.shape[0] or n == 0:
        return None
    top, bottom = [], []
    for a in range(0, w.shape[0], BLOCK):
        logits = (w[a : a + BLOCK] * gamma.float()) @ w_u.float()  # (block, vocab)
        top.append(_topk_rows(logits, n))
        bottom.append(_topk_rows(logits, n, largest=False))
    cat = lambda parts: (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))  # noqa: E731
    return cat(top), cat(bottom)
