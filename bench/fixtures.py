"""Fixtures written by the peer libraries themselves, for saescope's interop tests.

    make fixtures                   # or: .venv/bin/python bench/fixtures.py [--only saelens]

Run with saescope's Python, it builds the peers' venv (bench/.peers-venv, as `make bench`
does) and runs itself again with the peers' Python, which never imports saescope. Each
fixture is a tiny SAE (d_in 16, d_sae 32) with random, non-trivial parameters (non-zero biases
and thresholds, decoder rows not of unit norm where the library allows), saved by the
library's OWN save function into tests/fixtures/<library>/<name>/, next to:

- expected.safetensors: the fixed input `x` (8, d_in), and the library's own `f` = encode(x),
  `x_hat` = decode(f) and `out` = forward(x) (float32, on the CPU);
- fixture.json: library, version, the class and save function used, the config flags that
  change the math, and whether saescope is expected to load it ("expressible": false marks a
  file saescope must refuse with a one-line error, and says why).

Fixtures are deterministic (fixed seeds); rerunning overwrites them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the fixture writers and train_step.py beside this file

from fixtures_common import OUT  # noqa: E402


def _peers_python() -> Path:
    from train_step import ensure_peers  # bench/train_step.py builds the peers' venv

    py = ensure_peers(HERE / ".peers-venv")
    if py is None:
        sys.exit("could not build the peers' venv (bench/.peers-venv); see the pip error above")
    return py


def _libraries() -> dict[str, Callable[[Path], None]]:
    from fixtures_peers import dictionary_learning, sparsify
    from fixtures_saelens import saelens

    return {"saelens": saelens, "sparsify": sparsify, "dictionary_learning": dictionary_learning}


# ----- driver -----------------------------------------------------------------------------------

LIBRARY_NAMES = ("saelens", "sparsify", "dictionary_learning")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=LIBRARY_NAMES, action="append")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    peers = torch is not None and _has("sae_lens")
    if not peers or os.environ.get("PYTHONHASHSEED") != "0":
        # rerun under the peers' venv (from saescope's Python) with a fixed hash seed: SAELens
        # writes some cfg.json keys in set order, so the files come out the same every run
        py = Path(sys.executable) if peers else _peers_python()
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        os.execve(str(py), [str(py), __file__, *sys.argv[1:]], env)
    torch.manual_seed(0)
    libraries = _libraries()
    for lib in a.only or LIBRARY_NAMES:
        libraries[lib](a.out)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
