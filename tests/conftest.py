import os
import shutil
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from saescope import runs
from saescope.models import load_model
from saescope.runs import DataSpec
from saescope.saes import ARCHITECTURES
from saescope.training import TrainConfig

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one torch thread each avoids oversubscription,
    # in the workers and in the Python processes tests start (resume, harvest).
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

# `--precision auto` (the default) would pick bf16 on a CPU with AVX512-BF16: the suite's results
# must not depend on which CPU CI draws, so auto's probe answers "bf16 is not faster" here, in
# the workers and the processes tests start. tests/test_precision.py and test_lowp.py set or
# clear it themselves to test the probe.
os.environ.setdefault("SAESCOPE_BF16_SPEEDUP", "0")

ALL_SEEDS = (0, 1, 2)
"""The seeds `make claims` (--all-seeds) checks every claim on; `make test` checks seed 0."""


def pytest_addoption(parser):
    parser.addoption(
        "--all-seeds",
        action="store_true",
        default=False,
        help=f"run the claim tests on every seed {list(ALL_SEEDS)} (default: seed 0 only)",
    )


def claim_seeds(config: pytest.Config) -> list[int]:
    """The seeds a claim is checked on in this run."""
    return list(ALL_SEEDS) if config.getoption("--all-seeds") else [ALL_SEEDS[0]]


def pytest_generate_tests(metafunc):
    # A test (or a fixture it uses) asking for `claim_seed` runs once per claim seed; module
    # scope, so a module-scoped fixture built from the seed is built once per seed.
    if "claim_seed" in metafunc.fixturenames:
        metafunc.parametrize(
            "claim_seed", claim_seeds(metafunc.config), ids=lambda s: f"seed{s}", scope="module"
        )


# The longest tests' modules, longest first (CPU seconds on one core, measured 2026-12-01):
# they start at once, one per worker, so that no long test is left for the end.
LONGEST = (
    "tests/experiments/test_correlated.py",
    "tests/training/test_target.py",
    "tests/experiments/test_recovery.py",
    "tests/experiments/test_superposition.py",
)

BROWSER_GROUP = "browser"
"""The tests that drive Chromium: one worker runs them all, so Chromium starts once."""


def _module_fixture_group(item: pytest.Item) -> str | None:
    """The browser group if the item uses the browser; else its module path if it uses a
    module-scoped fixture (with its claim seed where each such fixture is built from the seed,
    so once per seed: each seed is then a unit of its own); else None."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    if "browser" in info.name2fixturedefs:
        return BROWSER_GROUP
    shared = [
        d
        for name, defs in info.name2fixturedefs.items()
        if name != "claim_seed"  # a parameter, not built: its tests may go to either worker
        for d in defs
        if d.scope in ("module", "class", "package")
    ]
    if not shared:
        return None
    group = item.nodeid.split("::")[0]
    callspec = getattr(item, "callspec", None)
    if all("claim_seed" in d.argnames for d in shared) and callspec is not None:
        group += f"-seed{callspec.params['claim_seed']}"
    return group


def _order(item: pytest.Item) -> tuple[int, int]:
    module = item.nodeid.split("::")[0]
    first = LONGEST.index(module) if module in LONGEST else len(LONGEST)
    long = item.get_closest_marker("claim") or item.get_closest_marker("slow")
    return first, 0 if long else 1


# A wrapper: its part before `yield` runs before every plugin's hook, xdist's included, which
# reads the groups (`--dist loadgroup`); tryfirst=True is not enough for that.
@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "claim_seed" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "claim"
        ):
            raise pytest.UsageError(f"{item.nodeid} takes claim_seed but is not marked claim")
    # `make test` hands out work units (--dist loadgroup): a module whose tests share a
    # module-scoped fixture is one unit, so one worker builds the fixture once (split over
    # both workers, each would build it), and so are the browser tests.
    for item in items:
        group = _module_fixture_group(item)
        if group is not None and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(group))
    # The longest modules first (LONGEST), then the other long tests (claims and those marked
    # slow), so the two workers share them out while the many short ones fill the gaps; the
    # order within each group stays as collected (the sort is stable).
    items.sort(key=_order)
    # The second worker's first test builds the shared glassllm run and its index (tens of
    # seconds, under a file lock) while the first runs the longest test: a worker that needed
    # them later would wait for the other to build them.
    first = next((i for i, it in enumerate(items) if "indexed_glass" in it.fixturenames), None)
    if first is not None and first > 1:
        items.insert(1, items.pop(first))
    yield
    _send_groups(config, items)


def _send_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """What xdist's worker does for `--dist loadgroup` (the group after an `@` in the ids it
    sends the scheduler) where xdist cannot: pytest 9.2 keeps a node's id in `_id`, xdist 3.8
    still writes `_nodeid`, and without this every test would be a unit of its own."""
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = type(item._id).parse(f"{item.nodeid}@{mark.args[0]}")


@pytest.fixture(scope="session")
def seeds(request) -> list[int]:
    """Every claim seed of this run, for a claim checked on all seeds together."""
    return claim_seeds(request.config)


def small_config(arch: str, d_in: int = 6, d_sae: int = 16, **kw) -> dict:
    """A small config of each architecture for tests."""
    extra = {"topk": {"k": 3}, "batchtopk": {"k": 3}, "matryoshka": {"k": 3}}.get(arch, {})
    return {"architecture": arch, "d_in": d_in, "d_sae": d_sae, **extra, **kw}


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def glass():
    """glassllm and its tokenizer, loaded once (tests must not change its weights)."""
    return load_model("glassllm")


@pytest.fixture(scope="session")
def glass_sae(tmp_path_factory) -> Path:
    """The folder of a run that trained a TopK SAE (d_sae 2048, k 16) on glassllm's layers.2
    through saescope's own API, on 131,072 tokens of the default corpus (about 15 s on 2
    cores): `Run.open` it. Trained once per test session, shared by the xdist workers."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common folder
    out = root / "glass_sae"
    with FileLock(f"{out}.lock"):
        if not (out / "cfg.json").is_file():
            data = DataSpec.for_model("glassllm", "layers.2")
            stream = data.open(1024)
            steps = runs.steps_for_tokens(131_072, stream)
            cfg = TrainConfig(steps=steps, lr=0.004, progress=False)
            torch.manual_seed(cfg.seed)
            sae = runs.build_sae("topk", stream, d_sae=2048, k=16)
            runs.train_run(sae, data, stream, cfg, out, overwrite=True)
    return out


INDEX_TOKENS = 8192


@pytest.fixture(scope="session")
def indexed_glass(glass_sae, tmp_path_factory) -> Path:
    """A copy of the `glass_sae` run indexed by saescope.analysis over INDEX_TOKENS held-out
    tokens: built once per test session, shared by the xdist workers (the explore, export and
    CLI tests read it, never write it)."""
    from saescope.analysis import IndexConfig, index_run

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' common folder
    out = root / "indexed" / "glass"
    with FileLock(f"{out.parent}.lock"):
        if not (out / "index.sqlite").is_file():  # the file is written last, whole
            if not out.is_dir():
                ignore = shutil.ignore_patterns("checkpoint*", "*.lock")
                shutil.copytree(glass_sae, out, ignore=ignore)
            index_run(runs.Run.open(out), cfg=IndexConfig(tokens=INDEX_TOKENS), progress=False)
    return out
