"""dictionary_learning's own loaders reading folders saescope wrote (issue 16, by hand; the
suite never needs the peers' venv).

    python bench/interop_dictionary_learning.py OUT      # saescope's venv: writes, then checks

writes one small random SAE per architecture variant with `save_dictionary_learning` into
OUT/<variant>/ (plus saescope's own outputs on a fixed input), then runs itself in the
peers' venv (bench/.peers-venv, or $PEERS_PYTHON), where
`dictionary_learning.utils.load_dictionary` (the library's default: from_pretrained, decoder
renormalisation included) and `load_state_dict` of ae.pt each load the folder; prints the max
abs differences of encode, decode and forward; exits 1 if any is off rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = os.environ.get("PEERS_PYTHON", ROOT / "bench" / ".peers-venv" / "bin" / "python")
RTOL, ATOL = 1e-4, 1e-5
VARIANTS = {
    "relu": {"architecture": "relu"},
    "relu_weighted": {"architecture": "relu", "l1_mode": "weighted"},
    "relu_uncentred": {"architecture": "relu", "apply_b_dec_to_input": False},
    "topk": {"architecture": "topk", "k": 4},
    "topk_uncentred": {"architecture": "topk", "k": 4, "apply_b_dec_to_input": False},
    "batchtopk": {"architecture": "batchtopk", "k": 4},
    "matryoshka": {"architecture": "matryoshka", "k": 4, "group_sizes": (32, 96, 128)},
    "jumprelu": {"architecture": "jumprelu"},
    "jumprelu_uncentred": {"architecture": "jumprelu", "apply_b_dec_to_input": False},
    "gated": {"architecture": "gated"},
    "gated_uncentred": {"architecture": "gated", "apply_b_dec_to_input": False},
}


def write(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from saescope.interop.dictionary_learning import save_dictionary_learning
    from saescope.saes import make_sae

    for i, (name, spec) in enumerate(VARIANTS.items()):
        sae = make_sae({"d_in": 64, "d_sae": 256, **spec})
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in sae.parameters():
                scale = 0.3 if p.dim() == 1 else p.shape[0] ** -0.5  # as bench/fixtures_common
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            if sae.cfg.unit_norm_decoder:
                sae.normalise_decoder()
            if hasattr(sae, "log_threshold"):
                sae.log_threshold.add_(math.log(0.4))
            elif hasattr(sae, "threshold"):
                sae.threshold.fill_(0.3)
        sae.eval()
        folder = save_dictionary_learning(sae, out / name, {"model_name": "glassllm"})
        x = torch.randn(32, 64, generator=g)
        with torch.no_grad():
            f = sae.encode(x)
            outputs = {"x": x, "f": f, "x_hat": sae.decode(f), "out": sae(x)}
        save_file(outputs, folder / "expected.safetensors")


def check(out: Path) -> int:
    """In the peers' venv: each folder through the library's own loaders."""
    import torch
    from dictionary_learning import utils
    from safetensors.torch import load_file

    failed = 0
    print("variant | dict_class | loader | max |f| diff | max |x_hat| diff | max |out| diff")
    for name in VARIANTS:
        folder = out / name
        want = load_file(folder / "expected.safetensors")
        default, config = utils.load_dictionary(str(folder), device="cpu")
        plain = copy.deepcopy(default)  # the same class, the state dict as saved
        plain.load_state_dict(torch.load(folder / "ae.pt", weights_only=True))
        for label, ae in (("load_dictionary", default), ("load_state_dict", plain)):
            with torch.no_grad():
                diffs = [
                    (ae.encode(want["x"]) - want["f"]).abs().max().item(),
                    (ae.decode(want["f"]) - want["x_hat"]).abs().max().item(),
                    (ae(want["x"]) - want["out"]).abs().max().item(),
                ]
                ok = torch.allclose(ae.encode(want["x"]), want["f"], rtol=RTOL, atol=ATOL)
                ok &= torch.allclose(ae(want["x"]), want["out"], rtol=RTOL, atol=ATOL)
            failed += not ok
            row = " | ".join(f"{d:.2e}" for d in diffs)
            print(f"{name} | {config['trainer']['dict_class']} | {label} | {row} | {ok}")
    return failed


def main() -> int:
    out = Path(sys.argv[-1])
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        return min(check(out), 1)
    out.mkdir(parents=True, exist_ok=True)
    write(out)
    info = {"written_by": "saescope", "variants": list(VARIANTS)}
    (out / "variants.json").write_text(json.dumps(info))
    return subprocess.call([str(PEERS_PYTHON), __file__, "check", str(out)])


if __name__ == "__main__":
    sys.exit(main())
