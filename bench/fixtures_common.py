"""Helpers shared by the fixture writers (bench/fixtures.py); run under the peers' venv."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
D_IN, D_SAE, N, K = 16, 32, 8, 4
HOOK = {"model_name": "glassllm", "hook_name": "blocks.1.hook_resid_post"}
HOOK_OUT = "blocks.1.hook_mlp_out"


# ----- shared helpers (peers' venv) -----------------------------------------------------------


def gen(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def fixed_input(seed: int = 0):
    import torch

    x = torch.randn(N, D_IN, generator=gen(1000 + seed)) * 1.5 + 0.3
    return x.float()


def randomise(module, seed: int, positive: tuple[str, ...] = ()) -> None:
    """Every parameter/buffer random: matrices ~ N(0, 1/fan_in), vectors ~ N(0, 0.3), those in
    `positive` uniform in (0.2, 0.8); decoder rows get norms spread over (0.5, 2)."""
    import torch

    g = gen(seed)
    with torch.no_grad():
        for name, p in [*module.named_parameters(), *module.named_buffers()]:
            if not p.is_floating_point() or p.dim() == 0:
                continue
            if name in positive:
                p.copy_(torch.rand(p.shape, generator=g) * 0.6 + 0.2)
            elif p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[0] ** 0.5)
        w_dec = getattr(module, "W_dec", None)
        if w_dec is not None and w_dec.dim() == 2:
            rows = w_dec.shape[0]
            scale = torch.rand(rows, generator=g) * 1.5 + 0.5
            w_dec.mul_(scale[:, None] / w_dec.norm(dim=1, keepdim=True))


def write(folder: Path, outputs: dict[str, Any], info: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in outputs.items()}
    save_file(tensors, str(folder / "expected.safetensors"))
    (folder / "fixture.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    shapes = ", ".join(f"{k}{tuple(v.shape)}" for k, v in tensors.items())
    print(f"  {folder.relative_to(OUT)}: {shapes}")
