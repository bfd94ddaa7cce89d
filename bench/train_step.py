"""SAE training-step speed and memory: saescope against plain PyTorch, the peer libraries
and the roofline, side by side in one run; writes bench/RESULTS.md and bench/scaling.png.

    make bench                      # or: .venv/bin/python bench/train_step.py [--quick]

Every implementation runs in a fresh process (so its peak RSS is its own) and times full
training steps (forward, loss, backward, optimiser, decoder-norm work) on one fixed fp32 batch:
the median of --reps steps after --warmup untimed ones, best median over --rounds rounds
(rounds interleave the implementations, so machine noise hits all alike).

- saescope: the training loop's own step (`saescope.training.optim.step`), TopK, BatchTopK, ReLU-L1
  and JumpReLU. ReLU and JumpReLU are set to the L0 a trained SAE has (--l0): their encoder
  bias / threshold is put at each latent's (1 - l0/d_sae) quantile on the batch.
- naive: a plain PyTorch TopK SAE (dense scatter, dense decode, autograd, Adam).
- peers: SAELens, EleutherAI sparsify and dictionary_learning through their own training-step
  code (bench/peer_step.py), installed from PyPI into a separate venv (--peers-venv) with the
  same CPU torch; each at its default and at its fastest documented setting.
- roofline: the bare encoder product (x @ W_enc + b_enc), the only dense work a TopK step
  needs; "share of roofline" = roofline time / step time.
- bf16 (issue 19): the same four saescope steps with `SAE.precision = "bf16"` (the encoder
  product from bfloat16 copies, everything else fp32), SAELens TopK with its own
  `autocast=True`, and the bf16 roofline (the bfloat16 encoder product alone). Run only where
  the CPU multiplies bf16 natively (avx512_bf16 / amx_bf16; --bf16 on forces them): on an
  AVX2 CPU torch's bf16 matmul is 8-80x slower than fp32, and the rows say nothing useful.

The scaling sweep times saescope TopK, naive TopK and the roofline over d_sae 2k -> 32k and
batch 1k -> 16k and plots seconds per step against the encoder's FLOPs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from machine import cpu_flags, cpu_name  # bench/machine.py: this file runs as a script

HERE = Path(__file__).resolve().parent
PEER_PINS = ("sae-lens==6.54.12", "eai-sparsify==1.3.3", "dictionary-learning==0.1.0")
TORCH_PIN = "torch==2.13.0"
OURS = (
    "saescope-topk",
    "saescope-batchtopk",
    "saescope-relu",
    "saescope-jumprelu",
    "saescope-topk-torch",
)
"""saescope's rows; "-torch": the same step with the compiled kernels off (SAESCOPE_NATIVE=0)."""
OURS_BF16 = tuple(f"{i}-bf16" for i in OURS if not i.endswith("-torch"))
"""The same steps with the encoder product in bfloat16 (SAE.precision = "bf16")."""
BASELINES = ("naive-topk", "roofline")
BF16_BASELINES = ("roofline-bf16",)
AUXK_IMPLS = ("saescope-topk", "saelens-topk-fast", "sparsify-auxk", "dictlearn-topk")
"""The TopK rows timed again with dead latents, so every library runs its AuxK."""


# ----- one implementation, in its own process ------------------------------------------------


@dataclass
class Shape:
    d_in: int
    d_sae: int
    k: int
    batch: int


def _time_steps(step: Callable[[], None], warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def _set_l0(sae, x, l0: int) -> None:
    """Put each latent's threshold at its (1 - l0/d_sae) quantile of pre on x."""
    import torch

    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        rank = max(1, round(x.shape[0] * (1 - l0 / sae.cfg.d_sae)))
        q = pre.kthvalue(rank, dim=0).values
        if sae.cfg.name == "jumprelu":
            sae.log_threshold.copy_(q.clamp_min(1e-3).log())
        else:
            sae.b_enc.sub_(q)


def _saescope_step(impl: str, s: Shape, l0: int, bandwidth: float, dead_frac: float):
    import torch

    from saescope import native
    from saescope.saes import make_sae
    from saescope.training import TrainConfig, optim

    arch = impl.removeprefix("saescope-").removesuffix("-bf16").removesuffix("-torch")
    cfg: dict = {"architecture": arch, "d_in": s.d_in, "d_sae": s.d_sae}
    if arch in ("topk", "batchtopk"):
        cfg["k"] = s.k
    if arch == "jumprelu":
        cfg["bandwidth"] = bandwidth
    sae = make_sae(cfg)
    x = torch.randn(s.batch, s.d_in, generator=torch.Generator().manual_seed(0))
    if arch in ("relu", "jumprelu"):
        _set_l0(sae, x, l0)
    n_dead = round(dead_frac * s.d_sae)
    with torch.no_grad():  # as peer_step.py: zero encoder, bias -1, never fire
        sae.W_enc[:, :n_dead] = 0.0
        sae.b_enc[:n_dead] = -1.0
    bf16 = impl.endswith("-bf16")
    sae.precision = "bf16" if bf16 else "fp32"
    tcfg = TrainConfig(steps=10**6, lr=1e-5, progress=False, precision=sae.precision)
    (slot,) = optim.make_slots([sae], tcfg)
    window = 10**9
    slot.since_fired[:n_dead] = window  # type: ignore[index]
    holder: dict = {}

    def step() -> None:
        holder["out"] = optim.step(slot, x, x, 10**5, tcfg, window)

    setting = "the training loop's optim.step: fused Adam, decoder projection, dead-latent counts"
    setting += "; compiled kernels " + ("on" if native.available() else "off (plain torch)")
    if n_dead:
        setting += f"; {n_dead} dead latents, AuxK on"
    if arch == "jumprelu":
        setting += f"; bandwidth {bandwidth}"
    if bf16:
        from saescope import lowp

        how = "native" if lowp.native_matmul("cpu") else "EMULATED (no native bf16 here)"
        setting += f"; encoder product in bf16 ({how}), fp32 weights, gradients and Adam"
    return step, lambda: holder["out"].l0(), setting


def _naive_step(s: Shape):
    import torch

    g = torch.Generator().manual_seed(0)
    W_dec = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(s.d_sae, s.d_in), dim=1))
    W_enc = torch.nn.Parameter(W_dec.detach().t().clone())
    b_enc = torch.nn.Parameter(torch.zeros(s.d_sae))
    b_dec = torch.nn.Parameter(torch.zeros(s.d_in))
    params = [W_enc, b_enc, W_dec, b_dec]
    opt = torch.optim.Adam(params, lr=1e-5)
    x = torch.randn(s.batch, s.d_in, generator=g)
    holder: dict = {}

    def step() -> None:
        pre = (x - b_dec) @ W_enc + b_enc
        vals, idx = pre.topk(s.k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        loss = ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        holder["l0"] = float((f != 0).sum(-1).float().mean())

    setting = "plain PyTorch: topk, dense scatter and decode, autograd, Adam, row renorm"
    return step, lambda: holder["l0"], setting


def _roofline_step(s: Shape):
    """The encoder product alone, done the fastest way measured here: torch.mm into a
    reused output buffer, no bias (a fresh output costs ~15 % more in page faults; the bias
    another few %). The faster of that and a plain addmm is the roofline."""
    import torch

    W = torch.randn(s.d_sae, s.d_in).t() / s.d_in**0.5  # saescope's latent-major layout
    Wc = W.contiguous()
    b = torch.zeros(s.d_sae)
    x = torch.randn(s.batch, s.d_in)
    buf = torch.empty(s.batch, s.d_sae)
    variants = {
        "torch.mm(x, W_enc, out=reused buffer)": lambda: torch.mm(x, W, out=buf),
        "torch.addmm(b_enc, x, W_enc)": lambda: torch.addmm(b, x, Wc),
    }
    times = {k: statistics.median(_time_steps(fn, 2, 5)) for k, fn in variants.items()}
    best = min(times, key=times.__getitem__)
    setting = "the encoder product alone: " + "; ".join(
        f"{k} {v * 1e3:.0f} ms" + (" (used)" if k == best else "") for k, v in times.items()
    )
    return variants[best], lambda: float("nan"), setting


def _roofline_bf16_step(s: Shape):
    """The bfloat16 encoder product alone: bf16 copies of x and W_enc (latent-major), torch.mm
    into a reused bf16 buffer (what the bf16 SAE step's product does natively)."""
    import torch

    W = (torch.randn(s.d_sae, s.d_in).t() / s.d_in**0.5).to(torch.bfloat16)
    x = torch.randn(s.batch, s.d_in).to(torch.bfloat16)
    buf = torch.empty(s.batch, s.d_sae, dtype=torch.bfloat16)

    def step() -> None:
        torch.mm(x, W, out=buf)

    setting = "the bf16 encoder product alone: torch.mm(x_bf16, W_enc_bf16, out=reused buffer)"
    return step, lambda: float("nan"), setting


def worker(a: argparse.Namespace) -> None:
    """Time one implementation in this process and print one JSON line."""
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    s = Shape(a.d_in, a.d_sae, a.k, a.batch)
    if a.worker.endswith("-torch"):
        os.environ["SAESCOPE_NATIVE"] = "0"
    if a.worker in OURS or a.worker in OURS_BF16:
        step, l0, setting = _saescope_step(a.worker, s, a.l0, a.bandwidth, a.dead_frac)
        library, version = "saescope", _version("saescope")
    elif a.worker == "roofline-bf16":
        step, l0, setting = _roofline_bf16_step(s)
        library, version = "roofline", torch.__version__
    elif a.worker == "naive-topk":
        step, l0, setting = _naive_step(s)
        library, version = "plain PyTorch", torch.__version__
    else:
        step, l0, setting = _roofline_step(s)
        library, version = "roofline", torch.__version__
    from peer_step import rss_mb  # bench/ is on sys.path: this file runs as a script

    rss_before = rss_mb()
    times = _time_steps(step, a.warmup, a.reps)
    med = statistics.median(times)
    row = {
        "impl": a.worker,
        "library": library,
        "version": version,
        "setting": setting,
        "median_s": med,
        "tokens_per_s": a.batch / med,
        "rss_before_mb": rss_before,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "l0": l0(),
    }
    print(json.dumps(row))


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


# ----- the driver ----------------------------------------------------------------------------


def ensure_peers(venv: Path) -> Path | None:
    """The peers' venv (created on first use); None when it cannot be built."""
    py = venv / "bin" / "python"
    stamp = venv / ".saescope-peers"
    if stamp.is_file() and stamp.read_text() == " ".join(PEER_PINS):
        return py
    print(f"installing {', '.join(PEER_PINS)} into {venv} (a few minutes, once)", flush=True)
    pin = venv.parent / ".peers-constraints.txt"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, TORCH_PIN], check=True)
        pin.write_text(TORCH_PIN + "\n")
        subprocess.run([*pip, "-c", str(pin), *PEER_PINS], check=True)
        # torchvision comes along and cannot load beside the CPU torch; nothing here uses it.
        subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=False)
    except subprocess.CalledProcessError as e:
        print(f"peer install failed ({e}); timing saescope alone", file=sys.stderr)
        return None
    finally:
        pin.unlink(missing_ok=True)
    stamp.write_text(" ".join(PEER_PINS))
    return py


def _peer_impls(py: Path) -> list[str]:
    out = subprocess.run(
        [str(py), str(HERE / "peer_step.py"), "--list"], capture_output=True, text=True
    )
    return out.stdout.split() if out.returncode == 0 else []


def run_one(impl: str, a: argparse.Namespace, py: Path | None, s: Shape) -> dict | None:
    common = [
        f"--d-in={s.d_in}", f"--d-sae={s.d_sae}", f"--k={s.k}", f"--batch={s.batch}",
        f"--warmup={a.warmup}", f"--reps={a.reps}", f"--threads={a.threads}", f"--l0={a.l0}",
        f"--dead-frac={a.dead_frac}",
    ]  # fmt: skip
    if impl in OURS or impl in BASELINES or impl in OURS_BF16 or impl in BF16_BASELINES:
        cmd = [sys.executable, str(Path(__file__)), f"--worker={impl}", *common]
        cmd.append(f"--bandwidth={a.bandwidth}")
    else:
        assert py is not None
        cmd = [str(py), str(HERE / "peer_step.py"), f"--impl={impl}", *common]
    # Threads are set by torch.set_num_threads in the worker. (OMP_NUM_THREADS in the
    # environment made every op up to 10x slower here on a busy machine: OpenMP spin-waits.)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"  {impl}: failed ({tail[0][:160]})", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def measure(impls: list[str], a: argparse.Namespace, py: Path | None) -> dict[str, dict]:
    """Best median per implementation over the rounds, implementations interleaved."""
    from tqdm import tqdm

    s = Shape(a.d_in, a.d_sae, a.k, a.batch)
    best: dict[str, dict] = {}
    with tqdm(total=len(impls) * a.rounds, desc="bench", unit="run") as bar:
        for _ in range(a.rounds):
            for impl in impls:
                bar.set_postfix_str(impl)
                row = run_one(impl, a, py, s)
                bar.update(1)
                if row and (impl not in best or row["median_s"] < best[impl]["median_s"]):
                    best[impl] = row
    return best


def sweep(a: argparse.Namespace) -> list[dict]:
    """Seconds per step over d_sae and batch for saescope TopK, naive TopK and the roofline."""
    from tqdm import tqdm

    points = [(m, 4096) for m in (2048, 4096, 8192, 16384, 32768)]
    points += [(8192, b) for b in (1024, 2048, 16384)]
    if a.quick:
        points = [(2048, 1024), (4096, 1024), (2048, 2048)]
    impls = ("saescope-topk", "naive-topk", "roofline")
    rows = []
    for m, b in tqdm(points, desc="sweep", unit="shape"):
        s = Shape(a.d_in, m, a.k, b)
        for impl in impls:
            if impl == "naive-topk" and m * b > 8192 * 4096:
                continue  # the slow baseline only where it takes seconds, not minutes
            row = run_one(impl, a, None, s)
            if row:
                rows.append({**row, "d_sae": m, "batch": b})
    return rows


def plot_sweep(rows: list[dict], path: Path, d_in: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    styles = {"saescope-topk": "o-", "naive-topk": "s--", "roofline": "^:"}
    for impl, style in styles.items():
        pts = sorted(
            (2 * r["batch"] * d_in * r["d_sae"] / 1e9, r["median_s"]) for r in rows
            if r["impl"] == impl
        )  # fmt: skip
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=impl)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("encoder GFLOP per step (2 x batch x d_in x d_sae)")
    ax.set_ylabel("seconds per training step")
    ax.set_title(f"TopK step cost vs work (d_in {d_in}, d_sae 2k-32k, batch 1k-16k)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


def checks(rows: dict[str, dict]) -> list[tuple[str, str, bool | None]]:
    """Issue 4's acceptance points, each (what, measured, held); None when not measurable."""

    def tps(impl: str) -> float | None:
        return rows[impl]["tokens_per_s"] if impl in rows else None

    def ratio(a: str, b: str, need: float, what: str) -> tuple[str, str, bool | None]:
        ta, tb = tps(a), tps(b)
        if ta is None or tb is None:
            return what, "not measured", None
        return what, f"{ta / tb:.2f}x", ta / tb >= need

    peers = [
        r for r in rows.values() if r["library"] not in ("saescope", "plain PyTorch", "roofline")
    ]
    ours = rows.get("saescope-topk")
    rss = (
        ("saescope TopK peak RSS <= best peer's", "not measured", None)
        if not peers or ours is None
        else (
            "saescope TopK peak RSS <= best peer's",
            f"{ours['peak_rss_mb']:.0f} MB vs {min(p['peak_rss_mb'] for p in peers):.0f} MB",
            ours["peak_rss_mb"] <= min(p["peak_rss_mb"] for p in peers),
        )
    )
    sparsify = max(
        (i for i in rows if i.startswith("sparsify")), key=lambda i: rows[i]["tokens_per_s"],
        default="sparsify-default",
    )  # fmt: skip

    def within(a: str, b: str, what: str) -> tuple[str, str, bool | None]:
        ta, tb = tps(a), tps(b)
        if ta is None or tb is None:
            return what, "not measured", None
        return what, f"{ta / tb:.2f}x", ta / tb >= 0.9

    return [
        ratio("saescope-topk-bf16", "saescope-topk", 1.8, "bf16 TopK >= 1.8x fp32 TopK (#19)"),
        ratio("saescope-topk-bf16", "roofline-bf16", 0.8, "bf16 TopK >= 80% of bf16 roofline"),
        within("saescope-batchtopk", "saescope-topk", "BatchTopK within 10% of TopK, fp32"),
        within("saescope-batchtopk-bf16", "saescope-topk-bf16", "... and in bf16"),
        ratio("saescope-topk", "saelens-topk-fast", 3.5, "TopK >= 3.5x SAELens TopK (fastest)"),
        ratio("saescope-topk", sparsify, 2.0, f"TopK >= 2x sparsify ({sparsify})"),
        ratio("saescope-topk", "roofline", 0.8, "TopK >= 80% of the roofline"),
        ratio("saescope-relu", "saelens-standard", 3.0, "ReLU-L1 >= 3x SAELens standard"),
        rss,
    ]


def write_results(
    rows: dict[str, dict],
    auxk_rows: dict[str, dict],
    sweep_rows: list[dict],
    a: argparse.Namespace,
    path: Path,
) -> str:
    import torch

    ref = rows.get("saelens-topk-fast")
    roof = rows.get("roofline")
    roof16 = rows.get("roofline-bf16")
    lines = [
        f"# Training-step benchmark, {date.today()}",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, {a.threads} torch threads; "
        f"Python {platform.python_version()}, torch {torch.__version__} (the same build in the "
        "peers' venv). Shape: "
        f"d_in {a.d_in}, d_sae {a.d_sae}, k {a.k}, batch {a.batch}, fp32. Each row: a fresh "
        f"process, median of {a.reps} full training steps after {a.warmup} warm-up steps, "
        f"best of {a.rounds} interleaved rounds. ReLU-L1 and JumpReLU run at L0 ~ {a.l0} "
        "(thresholds set to each latent's quantile). Command: `make bench`.",
        "",
        f"CPU flags: {cpu_flags()}. bf16 rows: {getattr(a, 'bf16_note', 'not run')}",
        "",
        "| implementation | library | version | tokens/s | vs SAELens TopK fastest | "
        "share of roofline | share of bf16 roofline | peak RSS MB | RSS before steps MB | L0 | "
        "setting |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for impl, r in sorted(rows.items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        vs = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "-"
        share = f"{roof['median_s'] / r['median_s']:.0%}" if roof else "-"
        share16 = f"{roof16['median_s'] / r['median_s']:.0%}" if roof16 else "-"
        l0 = "-" if r["l0"] != r["l0"] else f"{r['l0']:.1f}"  # NaN: no codes
        lines.append(
            f"| {impl} | {r['library']} | {r['version']} | {r['tokens_per_s']:,.0f} | {vs} | "
            f"{share} | {share16} | {r['peak_rss_mb']:,.0f} | "
            f"{r.get('rss_before_mb', float('nan')):,.0f} | {l0} | {r['setting']} |"
        )
    lines += [
        "",
        "## Acceptance (issues 4 and 19)",
        "",
        "| check | measured | holds |",
        "|---|---|---|",
    ]
    for what, measured, held in checks(rows):
        mark = "n/a" if held is None else ("yes" if held else "**no**")
        lines.append(f"| {what} | {measured} | {mark} |")
    if auxk_rows:
        lines += [
            "",
            f"## TopK with {a.auxk_frac:.0%} of the latents dead (AuxK on)",
            "",
            "The same shape; the dead latents' encoder columns are zero and their bias -1, and "
            "each library's dead-latent counters are set past its window, so every step runs "
            "its AuxK. (sparsify's AuxK loss does not reach its encoder: its fused encoder's "
            "backward drops that gradient.)",
            "",
            "| implementation | tokens/s | vs SAELens TopK fastest | peak RSS MB |",
            "|---|---|---|---|",
        ]
        ref_aux = auxk_rows.get("saelens-topk-fast")
        for impl, r in sorted(auxk_rows.items(), key=lambda kv: -kv[1]["tokens_per_s"]):
            vs = f"{r['tokens_per_s'] / ref_aux['tokens_per_s']:.2f}x" if ref_aux else "-"
            lines.append(f"| {impl} | {r['tokens_per_s']:,.0f} | {vs} | {r['peak_rss_mb']:,.0f} |")
    if sweep_rows:
        lines += [
            "",
            "## Scaling",
            "",
            "![seconds per step vs encoder FLOPs](scaling.png)",
            "",
            "| d_sae | batch | implementation | seconds/step | tokens/s |",
            "|---|---|---|---|---|",
        ]
        for r in sweep_rows:
            lines.append(
                f"| {r['d_sae']} | {r['batch']} | {r['impl']} | {r['median_s']:.4f} | "
                f"{r['tokens_per_s']:,.0f} |"
            )
    text = "\n".join(lines) + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return text


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=512)
    p.add_argument("--d-sae", type=int, default=8192)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--l0", type=int, default=32, help="L0 for ReLU-L1 and JumpReLU")
    p.add_argument("--bandwidth", type=float, default=0.05, help="JumpReLU's kernel width")
    p.add_argument("--dead-frac", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument(
        "--auxk-frac",
        type=float,
        default=0.25,
        help="also time the TopK rows with this fraction of latents dead (AuxK on); 0: skip",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=900, help="seconds per implementation")
    p.add_argument("--peers-venv", type=Path, default=HERE / ".peers-venv")
    p.add_argument("--no-peers", action="store_true", help="time saescope and baselines only")
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--quick", action="store_true", help="small shapes, one round (a smoke test)")
    p.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="the bf16 rows: auto (where the CPU has native bf16), on (always), off",
    )
    p.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.d_sae, a.batch, a.rounds, a.reps, a.warmup = 1024, 512, 1, 2, 1
    return a


def _bf16_rows(a: argparse.Namespace) -> bool:
    """Whether to time the bf16 rows; says why not (and sets a.bf16_note for RESULTS.md)."""
    sys.path.insert(0, str(HERE.parent / "src"))
    from saescope import lowp

    native = lowp.native_matmul("cpu")
    if a.bf16 == "off" or (a.bf16 == "auto" and not native):
        why = "--bf16 off" if a.bf16 == "off" else (
            f"this CPU has no native bf16 matmul (flags: {cpu_flags()}): torch's bf16 matmul "
            "runs 8-80x slower than fp32 here; run make bench on an AVX512-BF16 CPU or with "
            "--bf16 on"
        )  # fmt: skip
        a.bf16_note = f"skipped: {why}"
        print(f"bf16 rows skipped: {why}", flush=True)
        return False
    a.bf16_note = "native bf16" if native else "forced (--bf16 on) WITHOUT native bf16"
    return True


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.worker:
        worker(a)
        return
    py = None if a.no_peers else ensure_peers(a.peers_venv)
    bf16 = _bf16_rows(a)
    peers = [i for i in (_peer_impls(py) if py else []) if bf16 or not i.endswith("-bf16")]
    impls = [*OURS, *(OURS_BF16 if bf16 else ()), *peers, *BASELINES]
    impls += list(BF16_BASELINES if bf16 else ())
    rows = measure(impls, a, py)
    auxk_rows: dict[str, dict] = {}
    if a.auxk_frac > 0:
        topk_impls = [i for i in impls if i in AUXK_IMPLS]
        auxk_rows = measure(
            topk_impls, argparse.Namespace(**{**vars(a), "dead_frac": a.auxk_frac}), py
        )
    sweep_rows = [] if a.no_sweep else sweep(a)
    if sweep_rows:
        plot_sweep(sweep_rows, a.out.with_name("scaling.png"), a.d_in)
    print(write_results(rows, auxk_rows, sweep_rows, a, a.out))


if __name__ == "__main__":
    main()
