"""Peak memory of `saescope eval` on SmolLM2; writes bench/EVAL.md.

    make bench-eval     # or: .venv/bin/python bench/eval_rss.py [--cases ...] [--before REV]

A tiny SmolLM2 run is trained in a temp folder (`saescope train --arch topk --model smollm2
--hook model.layers.15 --tokens 1024 --batch-size 256`: 4 steps; evaluation memory depends on
the model and the SAE's shape, d_sae 4608 by default, not on how long it trained). Then each
case runs `python -m saescope eval RUN ... --json` (`--json` only changes the printout) in its
own subprocess, with this checkout's `src` first on PYTHONPATH, and its peak RSS is that
process's own ru_maxrss, from os.wait4 (this parent imports neither torch nor saescope, so the
high-water mark a child inherits at fork+exec is this small parent's).

Cases:
- load: what every eval does before evaluating: open the run, load the model, tokenise the
  text into contexts; plus one forward pass of one context, which reads every weight (the
  floor under the eval cases).
- default: `saescope eval RUN` with default options (65,536 tokens; the automatic batch size,
  5 contexts per pass for SmolLM2's 49,152-token vocabulary).
- issue: `--tokens 4096`, the command issue 13 measured at 7.4 GB.
- batch32: `--tokens 4096 --batch-size 32` (32 contexts per pass, the batch before this change:
  memory grows with the batch, not with --tokens).
- before (with --before REV): `--tokens 4096` with the `src` of git revision REV (e.g. the
  commit before this change), exported with `git archive` into the temp folder, on a run
  trained the same way by that code (older code refuses newer run folders).

On a 2-core machine the default case takes tens of minutes (about 66,000 tokens through three
full forward passes and a half one). --threads N sets OMP_NUM_THREADS for every child (torch's
thread count): on a machine shared with other work, 1 thread avoids OpenMP's spinning.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import date
from io import BytesIO
from pathlib import Path

from machine import cpu_name  # bench/machine.py: this file runs as a script

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRAIN = ["--arch", "topk", "--model", "smollm2", "--hook", "model.layers.15"]
TRAIN += ["--tokens", "1024", "--batch-size", "256", "--progress", "0"]
CASES = {
    "load": None,
    "default": [],
    "issue": ["--tokens", "4096"],
    "batch32": ["--tokens", "4096", "--batch-size", "32"],
}
LOAD_ONLY = (
    "import sys, json, torch; from saescope.runs import Run; r = Run.open(sys.argv[1]); "
    "c = r.data.contexts('test'); torch.no_grad()(r.model)(c[:1]); "
    "print(json.dumps({'test_contexts': c.shape[0]}))"
)
GB = 1e9


def _meminfo(key: str) -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


def measure(argv: list[str], src: Path, log: Path, threads: int | None, parse: bool = True) -> dict:
    """Run argv with src on PYTHONPATH; its peak RSS (ru_maxrss), wall time and (parse) its
    last stdout line as JSON."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(log, "w") as out, open(log.with_suffix(".err"), "w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed ({proc.returncode}): {log.with_suffix('.err')}")
    lines = log.read_text().strip().splitlines()
    return {
        "peak_gb": usage.ru_maxrss * 1024 / GB,
        "seconds": seconds,
        "out": json.loads(lines[-1]) if parse else {},
    }


def export_src(rev: str, dest: Path) -> Path:
    """The `src` folder of git revision rev, extracted under dest."""
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return dest / "src"


def _commit() -> str:
    """This checkout's commit, and whether its src has uncommitted changes."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "src"], capture_output=True, text=True)
    name = head.stdout.strip() or "(unknown)"
    return name + (" with uncommitted changes in src" if dirty.stdout.strip() else "")


def describe(name: str, args: list[str] | None, rev: str | None) -> str:
    if name == "load":
        return "open the run, tokenise, one forward pass of one context (no evaluation)"
    if name == "before":
        return f"`saescope eval RUN --tokens 4096` at {rev} (before)"
    return "`saescope eval RUN" + "".join(f" {x}" for x in args or []) + "`"


def write_results(path: Path, info: dict, rows: list[dict]) -> None:
    lines = [
        "# Evaluation memory",
        "",
        f"Written by `bench/eval_rss.py` (`make bench-eval`) on {date.today().isoformat()}; "
        f"the whole bench ran {info['bench_s'] / 60:.0f} min.",
        "",
        f"- Machine: {cpu_name()}, `nproc` {info['nproc']}, {info['mem_gb']:.1f} GB memory, "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch "
        f"{info['torch']} ({info['threads']}); load average (1 min) "
        f"{info['load_before']:.1f} before, "
        f"{info['load_after']:.1f} after (the machine is shared: times are indicative; "
        "memory is not affected).",
        f"- Code: this checkout's `src` at commit {info['commit']}.",
        "- Run: SmolLM2-135M (float32, vocab 49,152), TopK SAE on `model.layers.15`, d_in 576, "
        f"d_sae {info['d_sae']}, trained on 1,024 tokens; its held-out text has "
        f"{info['test_contexts']} contexts of 128 tokens.",
        "- Peak RSS: the eval process's ru_maxrss (os.wait4), GB = 10^9 bytes. It includes "
        "the model's weights (538 MB in float32, file-backed pages of the safetensors copy, "
        "counted once read) and the tokenised corpus; the `load` row is that floor.",
        "",
        "| case | command | tokens | contexts | peak RSS GB | above load GB | minutes | "
        "CE loss recovered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    floor = next((r["peak_gb"] for r in rows if r["case"] == "load"), None)
    for r in rows:
        out = r["out"]
        n = out.get("with_outliers", out).get("n_tokens")  # every token, outliers included
        above = f"{r['peak_gb'] - floor:.2f}" if floor is not None and r["case"] != "load" else "-"
        rec = out.get("ce_loss_recovered")
        lines.append(
            f"| {r['case']} | {r['command']} | {f'{n:,}' if n else '-'} | "
            f"{f'{-(-n // 127):,}' if n else '-'} | {r['peak_gb']:.2f} | {above} | "
            f"{r['seconds'] / 60:.1f} | {f'{rec:.4f}' if rec is not None else '-'} |"
        )
    lines += [
        "",
        "Evaluation streams: the core metrics are running sums per batch (`MetricSums`), and "
        "CE/KL take `--batch-size` contexts per forward pass (by default as many as keep one "
        "pass's logits within 128 MiB: 5 x 128 x 49,152 floats = 126 MB here), keep at most the "
        "clean log-probabilities of one batch and one spliced pass's logits, and run the float "
        "log-softmax over 2^23 logits at a time. So peak RSS does not grow with --tokens; it "
        "grows with --batch-size. The CE/KL numbers of `issue` and `batch32` (same tokens, "
        "other batches) agree to float rounding: see the raw numbers.",
        "",
        "Raw numbers (JSON, one line per case):",
        "",
        "```",
        *(json.dumps(r, sort_keys=True) for r in rows),
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--before", default=None, help="a git revision to measure `issue` at too")
    p.add_argument("--out", type=Path, default=HERE / "EVAL.md")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the children")
    a = p.parse_args()
    bench_start = time.perf_counter()
    info: dict = {"load_before": os.getloadavg()[0], "nproc": os.cpu_count()}
    info["threads"] = f"OMP_NUM_THREADS={a.threads}" if a.threads else "torch's default threads"
    info["commit"] = _commit()
    info["mem_gb"] = _meminfo("MemTotal")
    src = REPO / "src"
    py = sys.executable
    rows = []
    with tempfile.TemporaryDirectory(prefix="saescope-eval-rss-") as tmp:
        work = Path(tmp)
        run = work / "run"
        train = [py, "-m", "saescope", "train", *TRAIN, "--out", str(run)]
        measure(train, src, work / "train", a.threads, parse=False)
        info["d_sae"] = json.loads((run / "cfg.json").read_text())["d_sae"]
        info["torch"] = subprocess.run(
            [py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
        ).stdout.strip()
        plan = [(name, CASES[name], src, run) for name in a.cases]
        if a.before:  # the old code reads only the run folders it wrote: train one with it too
            old_src, old_run = export_src(a.before, work / "before-src"), work / "run-before"
            old_train = [py, "-m", "saescope", "train", *TRAIN, "--out", str(old_run)]
            measure(old_train, old_src, work / "train-before", a.threads, parse=False)
            plan.append(("before", CASES["issue"], old_src, old_run))
        for name, args, code, folder in plan:
            if args is None:
                argv = [py, "-c", LOAD_ONLY, str(folder)]
            else:
                argv = [py, "-m", "saescope", "eval", str(folder), *args, "--json"]
            print(f"{name}: {' '.join(argv[1:])}", flush=True)
            r = measure(argv, code, work / name, a.threads)
            r.update(case=name, command=describe(name, args, a.before))
            if name == "load":
                info["test_contexts"] = r["out"]["test_contexts"]
            print(f"  peak RSS {r['peak_gb']:.2f} GB, {r['seconds']:.0f} s", flush=True)
            rows.append(r)
            info.setdefault("test_contexts", "?")
            info["load_after"] = os.getloadavg()[0]
            info["bench_s"] = time.perf_counter() - bench_start
            write_results(a.out, info, rows)  # after every case: a failure keeps the others
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
