"""What the steering tests share: a TopK SAE with random weights (the steering machinery's
results do not depend on training; the trained one is conftest's `glass_sae`)."""

import torch

from saescope.saes import make_sae


def random_topk(d_in: int, d_sae: int, k: int, seed: int, spread: float | None = None):
    """A TopK SAE in eval mode from torch seed `seed`; spread: W_enc drawn from N(0, spread)
    (wider than the initialisation, so more features fire on real activations)."""
    torch.manual_seed(seed)
    sae = make_sae({"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k}).eval()
    if spread is not None:
        with torch.no_grad():
            sae.W_enc.normal_(0, spread)
    return sae
