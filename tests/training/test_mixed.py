"""Training in bf16 (`training.mixed`): the run records its precision, saves float32 SAEs,
resumes bitwise and keeps its precision on resume; and its quality on glassllm's layer 2
against the same run in fp32 (docs/PRECISION.md has the numbers)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from saescope import lowp, precision
from saescope.data import ArticleTask, ArticleTaskConfig
from saescope.errors import InputError
from saescope.evaluate import evaluate_in_model
from saescope.models.downstream import model_logits
from saescope.models.harvest import harvest
from saescope.runs import DataSpec
from saescope.saes import make_sae
from saescope.training import TrainConfig, train
from saescope.training.checkpoint import read_meta

pytestmark = pytest.mark.filterwarnings("ignore::saescope.precision.SlowPrecisionWarning")
ARCHS = [
    {"architecture": "topk", "k": 4},
    {"architecture": "batchtopk", "k": 4},
    {"architecture": "relu", "l1_coef": 2.0},
]
TASK = ArticleTaskConfig(d_in=32, n_features=64)
INIT = {"init_samples": 512}  # from the first 2 batches: the same in the cut run


def _saes() -> list:
    torch.manual_seed(0)  # d_in x d_sae = 16,384: the sparse path
    return [make_sae({"d_in": 32, "d_sae": 512, **a}) for a in ARCHS]


class _Cut:
    """The task's stream, ending after `n` batches (a run stopped part-way)."""

    def __init__(self, task: ArticleTask, n: int) -> None:
        self.task, self.n = task, n

    def iter_from(self, start: int):
        for i, b in enumerate(self.task.iter_from(start)):
            if start + i >= self.n:
                return
            yield b


def _files(out) -> list[dict[str, torch.Tensor]]:
    return [load_file(out / f"sae_{i}" / "sae_weights.safetensors") for i in range(len(ARCHS))]


def test_a_bf16_run_saves_float32_and_resumes_bitwise(tmp_path, monkeypatch, capsys):
    task = ArticleTask(TASK, batch_size=256)
    cfg = TrainConfig(steps=16, checkpoint_every=8, progress=False, precision="bf16", **INIT)
    whole = train(_saes(), task, cfg, tmp_path / "whole")
    fp32 = train(_saes(), task, TrainConfig(steps=16, progress=False, precision="fp32", **INIT))
    with pytest.raises(InputError, match="ended after 10 batches"):
        train(_saes(), _Cut(task, 10), cfg, tmp_path / "cut")
    assert read_meta(tmp_path / "cut")["train"]["precision"] == "bf16"
    monkeypatch.setenv(lowp.PROBE_ENV, "0.1")  # auto would pick fp32 here: the run keeps bf16
    auto = TrainConfig(steps=16, checkpoint_every=8, progress=True, precision="auto", **INIT)
    resumed = train(_saes(), task, auto, tmp_path / "cut", resume=True)
    assert "precision: bf16 (kept" in capsys.readouterr().out
    for a, b in zip(_files(tmp_path / "whole"), _files(tmp_path / "cut"), strict=True):
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == torch.float32 for k in a)
    meta = json.loads((tmp_path / "cut" / "sae_0" / "cfg.json").read_text())["metadata"]
    assert meta["training"]["precision"] == "bf16"
    for sae, other in zip(resumed.saes, fp32.saes, strict=True):
        assert sae.precision == "fp32" and sae.W_enc.dtype == torch.float32
        assert not torch.equal(sae.W_enc, other.W_enc)  # bf16 changed what was computed
    assert all(s.precision == "fp32" for s in whole.saes)


# ----- quality on glassllm's layer 2 ---------------------------------------------------------

HOOK = "layers.2"
STEPS = 250


@pytest.fixture(scope="module")
def glass_acts(glass):
    """Activations of glassllm's layer 2 on the corpus's training text (fp32 forward), and
    held-out contexts."""
    model, _ = glass
    data = DataSpec.for_model("glassllm", HOOK)
    ctx = data.contexts("train")[:64]
    x = torch.cat([b[HOOK] for b in harvest(model, ctx, [HOOK], batch_size=32)])
    return x, data.contexts("test")[:16]


@pytest.fixture(scope="module")
def pair(glass_acts, claim_seed) -> dict:
    """One TopK SAE trained in fp32 and in bf16 on the same batches from the same init."""
    x, _ = glass_acts
    batches = [x[i : i + 512] for i in range(0, x.shape[0] - 511, 512)]
    out = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(claim_seed)
        sae = make_sae({"architecture": "topk", "d_in": x.shape[1], "d_sae": 1024, "k": 16})
        stream = [batches[i % len(batches)] for i in range(STEPS)]
        cfg = TrainConfig(steps=STEPS, lr=0.004, progress=False, precision=name, seed=claim_seed)
        out[name] = train(sae, stream, cfg).saes[0]
    return out


@pytest.mark.slow
@pytest.mark.claim
def test_a_bf16_trained_sae_matches_fp32_on_glassllm(glass, glass_acts, pair):
    """Explained variance and CE loss recovered within 0.005 of the fp32-trained SAE's."""
    model, _ = glass
    held = glass_acts[1]
    got = {
        k: evaluate_in_model(s, model, held, HOOK, max_tokens=2048, batch_size=16)
        for k, s in pair.items()
    }
    for key in ("explained_variance", "ce_loss_recovered"):
        assert abs(got["bf16"][key] - got["fp32"][key]) <= 0.005, (key, got)
    assert got["fp32"]["explained_variance"] > 0.5  # a trained SAE, not noise


@pytest.mark.claim
def test_bf16_selection_differs_only_in_a_few_rows(glass_acts, pair):
    """The codes the bf16 product chooses, against fp32's, for a trained SAE: the fraction of
    tokens whose active set differs (ties and near-ties at the k-th value)."""
    x, _ = glass_acts
    sae = pair["fp32"]
    rows = x[:2048]
    sets = {}
    for name in ("fp32", "bf16"):
        sae.precision = name
        sets[name] = sae.encode(rows) != 0
    sae.precision = "fp32"
    differ = (sets["fp32"] != sets["bf16"]).any(dim=1).float().mean()
    assert 0 <= float(differ) < 0.25, float(differ)


def test_bf16_clean_ce_is_within_0_02_nats(glass):
    model, _ = glass
    ids = DataSpec.for_model("glassllm", HOOK).contexts("test")[:2, :64]

    def ce() -> float:
        with torch.no_grad():
            logits = model_logits(model, ids)[:, :-1].float()
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()))

    fp32 = ce()
    with precision.model_precision("bf16"):
        bf16 = ce()
    assert bf16 != fp32 and abs(bf16 - fp32) <= 0.02, (fp32, bf16)


@pytest.mark.claim
def test_ground_truth_recovery_is_unchanged_in_bf16(claim_seed):
    """On a hidden-feature task (48 features in 32-D), every feature fp32 recovers at cosine
    >= 0.99 bf16 recovers too."""
    task = ArticleTask(ArticleTaskConfig(d_in=32, n_features=48, feature_seed=claim_seed), 1024)
    found = {}
    for name in ("fp32", "bf16"):
        torch.manual_seed(claim_seed)
        sae = make_sae({"architecture": "topk", "d_in": 32, "d_sae": 64, "k": 2})
        cfg = TrainConfig(steps=200, lr_decay_start=0.5, progress=False, precision=name)
        trained = train(sae, task, cfg).saes[0]
        dec = torch.nn.functional.normalize(trained.W_dec.detach(), dim=1)
        found[name] = (task.features @ dec.T).max(dim=1).values  # best cosine per feature
    got = found["fp32"] >= 0.99
    assert got.float().mean() > 0.5, found  # the task is learnable at this size
    assert bool((found["bf16"][got] >= 0.99).all()), found
