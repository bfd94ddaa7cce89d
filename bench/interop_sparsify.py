"""sparsify's own loader reading folders saescope wrote (issue 16, by hand; the suite never
needs the peers' venv).

    python bench/interop_sparsify.py OUT      # saescope's venv: writes, then checks

writes one small random TopK SAE per variant with `save_sparsify` into OUT/<variant>/ (plus
saescope's own outputs on a fixed input), then runs itself in the peers' venv
(bench/.peers-venv, or $PEERS_PYTHON), where `SparseCoder.load_from_disk` loads each folder;
prints the max abs differences of encode (as a dense f), decode and forward; exits 1 if any
is off rtol 1e-4, atol 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = os.environ.get("PEERS_PYTHON", ROOT / "bench" / ".peers-venv" / "bin" / "python")
RTOL, ATOL = 1e-4, 1e-5
VARIANTS = {
    "topk": {},
    "transcoder": {"apply_b_dec_to_input": False},
    "skip": {"skip_connection": True},
    "skip_transcoder": {"skip_connection": True, "apply_b_dec_to_input": False},
}


def write(out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from saescope.interop.sparsify import save_sparsify
    from saescope.saes import make_sae

    for i, (name, spec) in enumerate(VARIANTS.items()):
        sae = make_sae({"architecture": "topk", "d_in": 64, "d_sae": 256, "k": 4, **spec})
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in sae.parameters():
                scale = 0.3 if p.dim() == 1 else p.shape[0] ** -0.5  # as bench/fixtures_common
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            sae.normalise_decoder()
        sae.eval()
        folder = save_sparsify(sae, out / name, {"hook_name": "layers.2"})
        x = torch.randn(32, 64, generator=g)
        with torch.no_grad():
            f = sae.encode(x)
            outputs = {"x": x, "f": f, "x_hat": sae.decode(f), "out": sae(x)}
        save_file(outputs, folder / "expected.safetensors")


def check(out: Path) -> int:
    """In the peers' venv: each folder through sparsify's own loader."""
    import torch
    from safetensors.torch import load_file
    from sparsify import SparseCoder

    failed = 0
    print("variant | transcode | skip | max |f| diff | max |x_hat| diff | max |out| diff")
    for name in VARIANTS:
        folder = out / name
        want = load_file(folder / "expected.safetensors")
        sc = SparseCoder.load_from_disk(folder)
        with torch.no_grad():
            acts, idx, _ = sc.encode(want["x"])
            f = torch.zeros_like(want["f"]).scatter(1, idx, acts)
            top, top_idx = want["f"].topk(sc.cfg.k)
            got = {"f": f, "x_hat": sc.decode(top, top_idx), "out": sc(want["x"]).sae_out}
        diffs = [(got[k] - want[k]).abs().max().item() for k in ("f", "x_hat", "out")]
        ok = all(torch.allclose(got[k], want[k], rtol=RTOL, atol=ATOL) for k in got)
        failed += not ok
        row = " | ".join(f"{d:.2e}" for d in diffs)
        print(f"{name} | {sc.cfg.transcode} | {sc.cfg.skip_connection} | {row} | {ok}")
    return failed


def main() -> int:
    out = Path(sys.argv[-1])
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        return min(check(out), 1)
    out.mkdir(parents=True, exist_ok=True)
    write(out)
    info = {"written_by": "saescope", "variants": list(VARIANTS)}
    (out / "variants.json").write_text(json.dumps(info))
    env = {**os.environ, "SPARSIFY_DISABLE_TRITON": "1"}  # the eager decoder on the CPU
    return subprocess.call([str(PEERS_PYTHON), __file__, "check", str(out)], env=env)


if __name__ == "__main__":
    sys.exit(main())
