"""Every command starts without importing the web app or plotting: the parser is built from
light modules, and the heavy ones (FastAPI, matplotlib, the experiments) load when a command
that needs them runs."""

import subprocess
import sys

import pytest

HEAVY = ("fastapi", "uvicorn", "matplotlib", "saescope.experiments.seed_demos")


@pytest.mark.slow
def test_building_the_cli_imports_nothing_heavy():
    code = (
        "import sys; from saescope.cli import build_parser; build_parser(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
