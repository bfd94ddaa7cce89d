"""Independent float64 reference implementations of every architecture's loss terms.

Written from the papers' formulas with plain torch ops (no saescope.ops), so the gradient
tests compare two separate derivations. Straight-through estimators are realised here with
the "value from one expression, gradient from another" trick instead of autograd Functions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _mse(y: Tensor, y_hat: Tensor) -> Tensor:
    return ((y_hat - y) ** 2).sum(dim=1).mean()


def _centre(p: dict[str, Tensor], x: Tensor, cfg: dict) -> Tensor:
    return x - p["b_dec"] if cfg.get("apply_b_dec_to_input", True) else x


def _row_topk_mask(scores: Tensor, k: int) -> Tensor:
    order = scores.argsort(dim=1, descending=True)[:, :k]
    return torch.zeros_like(scores).scatter(1, order, 1.0)


def _auxk(
    p: dict[str, Tensor], pre: Tensor, y: Tensor, y_hat: Tensor, cfg: dict, dead: Tensor | None
) -> Tensor:
    if dead is None or not dead.any():
        return pre.new_zeros(())
    k_aux = min(cfg.get("k_aux") or max(1, cfg["d_in"] // 2), int(dead.sum()))
    scores = torch.where(dead, pre, torch.full_like(pre, -1e30))
    mask = _row_topk_mask(scores, k_aux)
    z = torch.relu(pre) * mask
    e = (y - y_hat).detach()
    e_hat = z @ p["W_dec"]  # no bias
    return ((e - e_hat) ** 2).sum() / ((e - e.mean(dim=0)) ** 2).sum()


def relu_terms(p, x, y, cfg, scale=1.0, dead=None):
    f = torch.relu(_centre(p, x, cfg) @ p["W_enc"] + p["b_enc"])
    y_hat = f @ p["W_dec"] + p["b_dec"]
    if cfg.get("l1_mode", "unit") == "unit":
        l1 = f.abs().sum(dim=1).mean()
    else:
        l1 = (f.abs() * torch.linalg.norm(p["W_dec"], dim=1)).sum(dim=1).mean()
    return {"mse": _mse(y, y_hat), "l1": cfg.get("l1_coef", 0.5) * scale * l1}


def topk_terms(p, x, y, cfg, scale=1.0, dead=None):
    pre = _centre(p, x, cfg) @ p["W_enc"] + p["b_enc"]
    f = torch.relu(pre) * _row_topk_mask(pre, cfg["k"])
    y_hat = f @ p["W_dec"] + p["b_dec"]
    aux = _auxk(p, pre, y, y_hat, cfg, dead)
    return {"mse": _mse(y, y_hat), "auxk": cfg.get("aux_coef", 1 / 32) * aux}


def batchtopk_terms(p, x, y, cfg, scale=1.0, dead=None):
    pre = _centre(p, x, cfg) @ p["W_enc"] + p["b_enc"]
    flat = torch.relu(pre).reshape(-1)
    n_keep = max(1, int(cfg["k"] * pre.shape[0]))  # as SAELens: int(k * N)
    keep = torch.zeros_like(flat)
    keep[flat.argsort(descending=True)[:n_keep]] = 1.0
    f = (flat * keep).reshape(pre.shape)
    y_hat = f @ p["W_dec"] + p["b_dec"]
    aux = _auxk(p, pre, y, y_hat, cfg, dead)
    return {"mse": _mse(y, y_hat), "auxk": cfg.get("aux_coef", 1 / 32) * aux}


def gated_terms(p, x, y, cfg, scale=1.0, dead=None):
    xc = _centre(p, x, cfg)
    pi_gate = xc @ p["W_enc"] + p["b_gate"]
    W_mag = p["W_enc"] * torch.exp(p["r_mag"])[None, :]
    pi_mag = xc @ W_mag + p["b_mag"]
    f = (pi_gate > 0).double() * torch.relu(pi_mag)
    y_hat = f @ p["W_dec"] + p["b_dec"]
    norms = torch.linalg.norm(p["W_dec"], dim=1)
    l1 = (torch.relu(pi_gate) * norms).sum(dim=1).mean()
    y_gate = torch.relu(pi_gate) @ p["W_dec"].detach() + p["b_dec"].detach()
    return {
        "mse": _mse(y, y_hat),
        "l1": cfg.get("l1_coef", 0.5) * scale * l1,
        "gate_aux": _mse(y, y_gate),
    }


def jumprelu_terms(p, x, y, cfg, scale=1.0, dead=None):
    eps = cfg["bandwidth"]
    z = _centre(p, x, cfg) @ p["W_enc"] + p["b_enc"]
    theta = torch.exp(p["log_threshold"])
    # A ramp whose derivative in theta is -(1/eps) on |z - theta| < eps/2 and 0 elsewhere:
    # exactly the rectangle-kernel pseudo-derivative. z is detached: dH/dz = 0.
    ramp = torch.clamp((z.detach() - theta) / eps + 0.5, 0.0, 1.0)
    H = (z > theta).double()
    H_ste = H + ramp - ramp.detach()  # value H, gradient of the ramp
    f = z * H + theta.detach() * (ramp - ramp.detach())  # df/dz = H, df/dtheta = -(theta/eps)K
    y_hat = f @ p["W_dec"] + p["b_dec"]
    l0 = H_ste.sum(dim=1).mean()
    return {"mse": _mse(y, y_hat), "l0": cfg["l0_coef"] * scale * l0}


def matryoshka_terms(p, x, y, cfg, scale=1.0, dead=None):
    """Batch top-k codes; each nested prefix (group sizes summed) decoded on its own with
    b_dec; the mse term is the prefixes' squared errors weighted by prefix size squared
    (normalised), or their mean for prefix_weights "uniform"; AuxK on the full
    reconstruction's residual."""
    pre = _centre(p, x, cfg) @ p["W_enc"] + p["b_enc"]
    flat = torch.relu(pre).reshape(-1)
    n_keep = max(1, int(cfg["k"] * pre.shape[0]))  # as SAELens: int(k * N)
    keep = torch.zeros_like(flat)
    keep[flat.argsort(descending=True)[:n_keep]] = 1.0
    f = (flat * keep).reshape(pre.shape)
    errors, ends, end = [], [], 0
    for size in cfg["group_sizes"]:
        end += size
        ends.append(end)
        mask = (torch.arange(pre.shape[1]) < end).double()
        y_hat = (f * mask) @ p["W_dec"] + p["b_dec"]
        errors.append(_mse(y, y_hat))
    aux = _auxk(p, pre, y, y_hat, cfg, dead)
    uniform = cfg.get("prefix_weights", "squared") == "uniform"
    raw = torch.tensor([1.0 if uniform else float(m * m) for m in ends], dtype=torch.float64)
    mse = (torch.stack(errors) * raw / raw.sum()).sum()
    return {"mse": mse, "auxk": cfg.get("aux_coef", 1 / 32) * aux}


REFERENCE = {
    "relu": relu_terms,
    "topk": topk_terms,
    "batchtopk": batchtopk_terms,
    "matryoshka": matryoshka_terms,
    "gated": gated_terms,
    "jumprelu": jumprelu_terms,
}
