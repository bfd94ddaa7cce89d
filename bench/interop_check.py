"""The reverse direction of the interop fixtures: peer libraries' own loaders reading the
folders saescope writes.

    make interop-check      # or: .venv/bin/python bench/interop_check.py [--peers-venv DIR]

For every format in `saescope.interop.FORMATS` but saescope's own, and every saescope
architecture (relu, topk, batchtopk, jumprelu, gated, matryoshka; each also with a skip
connection, as a transcoder (d_out != d_in, and d_out = d_in, without pre-centring) and as a
skip transcoder), a tiny SAE with random, non-trivial parameters (every
parameter moved off its initial value, decoder norms spread over (0.5, 2), an inference
threshold in the range of its activations) is saved as a saescope folder and written in that
format with `convert`. The peer's own loader (bench/interop_peer.py, run by the peers' venv's
Python: SAELens SAE.load_from_disk, sparsify SparseCoder.load_from_disk, dictionary_learning
<Class>.from_pretrained) reads it and encodes, decodes and runs forward on a fixed input,
compared with saescope's (rtol 1e-4, atol 1e-5). What `convert` refuses is listed with the
reason. The table goes to bench/INTEROP.md and the terminal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from saescope.errors import FormatError  # noqa: E402
from saescope.interop import FORMATS, convert  # noqa: E402
from saescope.saes import SAE, make_sae  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
D_IN, D_SAE, D_OUT, N = 16, 32, 12, 24
ARCHS: dict[str, dict[str, Any]] = {
    "relu": {},
    "topk": {"k": 5},
    "batchtopk": {"k": 5},
    "jumprelu": {},
    "gated": {},
    "matryoshka": {"k": 5, "group_sizes": [4, 12, 16]},
}
TRANSCODER = {"d_out": D_OUT, "apply_b_dec_to_input": False}
VARIANTS: dict[str, dict[str, Any]] = {
    "": {},
    "skip": {"skip_connection": True},
    "transcoder": TRANSCODER,
    "transcoder d_out=d_in": {"d_out": D_IN, "apply_b_dec_to_input": False},
    "skip transcoder": {**TRANSCODER, "skip_connection": True},
}
"""Each architecture as an SAE, with a skip connection (W_skip), and as transcoders."""


def cases() -> dict[str, dict[str, Any]]:
    return {
        f"{a} {v}".strip(): {"architecture": a, **f, **extra}
        for v, extra in VARIANTS.items()
        for a, f in ARCHS.items()
    }


def fixed_input() -> torch.Tensor:
    return torch.randn(N, D_IN, generator=torch.Generator().manual_seed(1234)) * 1.5 + 0.3


def random_sae(fields: dict[str, Any], seed: int, x: torch.Tensor) -> SAE:
    """Every parameter moved off its initial value, decoder norms in (0.5, 2); the BatchTopK
    family's inference threshold at the 70th percentile of the positive pre-activations on x,
    so that some latents fire and some do not."""
    torch.manual_seed(seed)
    sae = make_sae({"d_in": D_IN, "d_sae": D_SAE, **fields})
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        sae.W_dec.mul_((torch.rand(D_SAE, 1) * 1.5 + 0.5) / sae.W_dec.norm(dim=1, keepdim=True))
        if fields["architecture"] in ("batchtopk", "matryoshka"):
            pre = sae.pre_acts(x)
            sae.threshold.fill_(float(pre[pre > 0].quantile(0.7)))
    return sae.eval()


def prepare(work: Path, x: torch.Tensor) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each (format, case): written with convert (manifest entry) or refused (a row)."""
    manifest, refused = [], []
    for fmt in (f for f in FORMATS if f != "saescope"):
        for seed, (case, fields) in enumerate(cases().items()):
            sae = random_sae(fields, seed, x)
            name = f"{fmt}/{case.replace(' ', '_')}"
            own = work / "saescope" / case.replace(" ", "_")
            sae.save(own, {"data": {"kind": "model", "model": "glassllm", "hook": "blocks.1"}})
            try:
                convert(own, work / name, fmt)
            except FormatError as e:
                refused.append({"format": fmt, "case": case, "result": f"refused: {e}"})
                continue
            with torch.no_grad():
                f = sae.encode(x)
                want = {"f": f, "x_hat": sae.decode(f), "out": sae(x)}
            save_file(want, str(work / name) + ".want.safetensors")
            manifest.append({"format": fmt, "case": case, "folder": name, "d_out": sae.cfg.d_out})
    return manifest, refused


def written_as(folder: Path, fmt: str) -> str:
    for file, key in (("cfg.json", "architecture"), ("config.json", "trainer")):
        if (folder / file).is_file():
            value = json.loads((folder / file).read_text()).get(key)
            if isinstance(value, dict):
                value = value.get("dict_class")
            if value:
                return str(value)
    return fmt


def compare(work: Path, entry: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    row = {"format": entry["format"], "case": entry["case"]}
    row["written as"] = written_as(work / entry["folder"], entry["format"])
    if "error" in peer:
        return {**row, "result": f"peer failed: {peer['error']}"}
    want = load_file(str(work / entry["folder"]) + ".want.safetensors")
    got = load_file(str(work / entry["folder"]) + ".peer.safetensors")
    row["peer loader"] = peer["loader"]
    diffs = {k: float((got[k] - want[k]).abs().max()) for k in want}
    ok = all(torch.allclose(got[k], want[k], rtol=RTOL, atol=ATOL) for k in want)
    ok &= torch.equal(got["f"] != 0, want["f"] != 0)
    row["max |diff| f / x_hat / out"] = " / ".join(f"{diffs[k]:.1e}" for k in ("f", "x_hat", "out"))
    row["L0"] = f"{float((want['f'] != 0).sum(-1).float().mean()):.1f}"
    return {**row, "result": "same" if ok else "DIFFERENT"}


def markdown(rows: list[dict[str, Any]], versions: str) -> str:
    cols = ["format", "case", "written as", "peer loader", "L0"]
    cols += ["max |diff| f / x_hat / out", "result"]
    lines = [
        "# Peer loaders reading saescope's writes (`make interop-check`)",
        "",
        f"bench/interop_check.py; peers: {versions}. Each saescope architecture, tiny (d_in "
        f"{D_IN}, d_sae {D_SAE}; transcoders d_out {D_OUT}, no pre-centring) with random "
        "non-trivial parameters, written with `convert` and read by the peer's own loader; "
        f"encode, decode and forward on a fixed input of {N} tokens against saescope's "
        f"(same: all within rtol {RTOL}, atol {ATOL}, and the same latents fire; L0: "
        "saescope's mean active latents per token, of 32).",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in rows:
        cells = [str(r.get(c, "-")).replace("|", "/") for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def peer_versions(py: Path) -> str:
    code = (
        "from importlib.metadata import version as v; print(', '.join(f'{p} {v(p)}' for p in "
        "('sae-lens', 'eai-sparsify', 'dictionary-learning', 'torch')))"
    )
    return subprocess.run([str(py), "-c", code], capture_output=True, text=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peers-venv", type=Path, default=HERE / ".peers-venv")
    p.add_argument("--out", type=Path, default=HERE / "INTEROP.md")
    a = p.parse_args()
    from train_step import ensure_peers  # builds the peers' venv as `make bench` does

    py = ensure_peers(a.peers_venv)
    if py is None:
        sys.exit("could not build the peers' venv; see the pip error above")
    x = fixed_input()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        save_file({"x": x}, str(work / "input.safetensors"))
        manifest, refused = prepare(work, x)
        (work / "manifest.json").write_text(json.dumps(manifest))
        subprocess.run([str(py), str(HERE / "interop_peer.py"), str(work)], check=True)
        peer = json.loads((work / "peer.json").read_text())
        rows = [compare(work, e, peer[e["folder"]]) for e in manifest] + refused
    order = list(cases())
    rows.sort(key=lambda r: (r["format"], order.index(r["case"])))
    text = markdown(rows, peer_versions(py))
    a.out.write_text(text)
    print(text)
    bad = [r for r in rows if r["result"] != "same" and not r["result"].startswith("refused")]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
