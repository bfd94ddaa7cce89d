"""Load test of `saescope explore`: the app (`create_app`) served by uvicorn on 127.0.0.1 in its
own process, on an indexed glassllm run, answers >= 1000 requests from 32 concurrent clients,
a shuffled mix of its pages and static files and its JSON API (feature dashboards, searches by
token, by text and by density, the prompt view's forward pass, steering, the seed demos'
data); writes bench/LOAD.md with the errors (any status other than 200, or no answer) and
p50 / p95 / max per route, then the same mix from one client alone.

    make bench-load            # or: .venv/bin/python bench/load.py [--run RUN] [--requests N]

Without --run, a glassllm run (TopK, d_sae 4096, k 32, layers.2, trained on 262,144 tokens) is
trained and indexed over --index-tokens tokens in a temp folder first (a few minutes on 2
cores; --keep DIR keeps it); the seed demos' file (for /api/seed) is built there too, as
`saescope explore` does. Each route is called once before the clock starts (the index opened,
the model loaded), so the numbers are those of a warm server. Clients are asyncio tasks
sharing one httpx client (32 connections) in this process; the server is one uvicorn worker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
from machine import cpu_name  # bench/machine.py: this file runs as a script

HERE = Path(__file__).resolve().parent
TOKENS = [" the", " Queen", " King", " and", " Alice", " said", ",", " of", " love", " heaven"]
TEXTS = ["the Queen", "my lord", "heaven", "King", "love", "thou art"]
PROMPTS = [
    "The Queen said to the King that",
    "Alice looked at the Mock Turtle and sighed.",
    "Of man's first disobedience, and the fruit",
    "To be, or not to be: that is the question.",
]
WEIGHTS = {  # share of requests per route
    "GET /api/features/{id}": 30,
    "GET /api/search?token=": 10,
    "GET /api/search?text=": 8,
    "GET /api/search?order=density": 6,
    "GET /api/runs": 3,
    "GET /api/seed/disentangler": 3,
    "GET /api/seed/sparsity": 3,
    "POST /api/prompt": 10,
    "POST /api/steer": 3,
    "GET /": 4,
    "GET page": 12,
    "GET static": 14,
}


def build_run(folder: Path, index_tokens: int) -> Path:
    """Train a glassllm TopK run and index it (saescope's own API)."""
    import torch

    from saescope import runs
    from saescope.analysis import IndexConfig, index_run
    from saescope.runs import DataSpec, Run
    from saescope.training import TrainConfig

    out = folder / "glass_load"
    data = DataSpec.for_model("glassllm", "layers.2")
    stream = data.open(1024)
    cfg = TrainConfig(steps=runs.steps_for_tokens(262_144, stream), lr=0.004, progress=False)
    torch.manual_seed(cfg.seed)
    sae = runs.build_sae("topk", stream, d_sae=4096, k=32)
    runs.train_run(sae, data, stream, cfg, out, overwrite=True)
    index_run(Run.open(out), cfg=IndexConfig(tokens=index_tokens), progress=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_demo(folder: Path) -> Path:
    """The seed demos' file (saescope explore builds the same when it is missing)."""
    from saescope.experiments import seed_demos

    return seed_demos.ensure(folder / "seed_demos.json", progress=False)


@dataclass(frozen=True)
class Site:
    """What requests can name: the SAE's width, the pages and other static files, the seed
    demo's sparsity levels."""

    d_sae: int
    pages: list[str]
    static: list[str]
    levels: int


def start_server(run: Path, demo: Path, port: int) -> subprocess.Popen[bytes]:
    """uvicorn serving create_app([run], demo) on 127.0.0.1:port, in a child process."""
    code = (
        "import sys, uvicorn; from saescope.explore import create_app; "
        "uvicorn.run(create_app([sys.argv[1]], sys.argv[3]), host='127.0.0.1', "
        "port=int(sys.argv[2]), "
        "log_level='warning')"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code, str(run), str(port), str(demo)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start within 60 s")


def plan(n: int, site: Site, seed: int) -> list[tuple]:
    """n requests (route, method, path, json body), shuffled, in the WEIGHTS proportions."""
    rng = random.Random(seed)
    routes = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=n)
    # every route at least a few times
    routes[: 3 * len(WEIGHTS)] = list(WEIGHTS) * 3
    rng.shuffle(routes)
    out = []
    for route in routes:
        out.append(request_for(route, rng, site))
    return out


def request_for(route: str, rng: random.Random, site: Site) -> tuple:
    d_sae, pages, static = site.d_sae, site.pages, site.static
    if route == "GET /api/features/{id}":
        return route, "GET", f"/api/features/{rng.randrange(d_sae)}", None
    if route == "GET /api/search?token=":
        return route, "GET", "/api/search", {"token": rng.choice(TOKENS)}
    if route == "GET /api/search?text=":
        return route, "GET", "/api/search", {"text": rng.choice(TEXTS)}
    if route == "GET /api/search?order=density":
        lim = rng.choice([20, 50])
        return (
            route,
            "GET",
            "/api/search",
            {"order": "density", "limit": lim, "offset": rng.randrange(200)},
        )
    if route == "GET /api/runs":
        return route, "GET", "/api/runs", None
    if route == "GET /api/seed/disentangler":
        return route, "GET", "/api/seed/disentangler", None
    if route == "GET /api/seed/sparsity":
        return route, "GET", "/api/seed/sparsity", {"level": rng.randrange(site.levels)}
    if route == "POST /api/prompt":
        return route, "POST", "/api/prompt", {"text": rng.choice(PROMPTS), "top": 5}
    if route == "POST /api/steer":
        body = {"prompt": rng.choice(PROMPTS), "max_new_tokens": 8}
        body["features"] = [{"id": rng.randrange(d_sae), "value": 5.0}]
        return route, "POST", "/api/steer", body
    if route == "GET /":
        return route, "GET", "/", None
    if route == "GET page":
        return route, "GET", "/static/" + rng.choice(pages), None
    return route, "GET", "/static/" + rng.choice(static), None


async def send(client: httpx.AsyncClient, method: str, path: str, body: Any) -> httpx.Response:
    if method == "POST":
        return await client.post(path, json=body)
    return await client.get(path, params=body, follow_redirects=True)


async def fire(base: str, requests: list[tuple], clients: int) -> tuple[list[dict], float]:
    """Send every request from `clients` concurrent workers; each one's route, status, ms."""
    queue: asyncio.Queue[tuple] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def worker() -> None:
            while not queue.empty():
                route, method, path, body = queue.get_nowait()
                t0 = time.perf_counter()
                try:
                    r = await send(client, method, path, body)
                    status, error = r.status_code, None if r.status_code == 200 else r.text[:200]
                except httpx.HTTPError as e:
                    status, error = 0, f"{type(e).__name__}: {e}"
                ms = (time.perf_counter() - t0) * 1000
                results.append({"route": route, "status": status, "ms": ms, "error": error})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return results, wall


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summary(results: list[dict]) -> list[dict]:
    by: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by[r["route"]].append(r)
    rows = []
    for route in [*WEIGHTS, "all"]:
        got = results if route == "all" else by.get(route, [])
        if not got:
            continue
        ms = [r["ms"] for r in got]
        rows.append(
            {
                "route": route,
                "requests": len(got),
                "errors": sum(r["status"] != 200 for r in got),
                "p50": statistics.median(ms),
                "p95": percentile(ms, 0.95),
                "max": max(ms),
            }
        )
    return rows


def _table(rows: list[dict]) -> list[str]:
    lines = [
        "| route | requests | errors | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['route']} | {r['requests']} | {r['errors']} | {r['p50']:.1f} | "
            f"{r['p95']:.1f} | {r['max']:.1f} |"
        )
    return lines


def report(rows: list[dict], solo_rows: list[dict], meta: dict[str, Any]) -> str:
    lines = [
        "# Load test: `saescope explore`",
        "",
        f"{meta['date']}, {meta['cpu']} ({meta['cores']} cores, shared with other work), "
        f"Python {platform.python_version()}; `make bench-load` (bench/load.py).",
        "",
        f"The app served by one uvicorn worker on 127.0.0.1 ({meta['run']}), "
        f"{meta['requests']:,} requests from {meta['clients']} concurrent clients (asyncio "
        "tasks sharing one httpx client in another process), a shuffled mix of pages, static "
        "files and API calls, after one warm-up call per route. Feature ids uniform over "
        "the SAE; searches for common tokens and words; prompts of about 10 tokens; steering "
        "8 new tokens with one feature clamped. `GET /` follows its redirect to the browser "
        "page (two requests, one latency).",
        "",
        f"**{meta['errors']} errors** (any status but 200, or no answer) in "
        f"{meta['requests']:,} requests; {meta['wall']:.1f} s wall, "
        f"{meta['requests'] / meta['wall']:.0f} requests/s.",
        "",
        *_table(rows),
        "",
        "Latency is measured at the client, so it includes queueing behind the other "
        f"{meta['clients'] - 1} clients: one uvicorn worker answers them all, the model calls "
        "(prompt, steer) hold the run's lock one at a time, and the server shares the cores "
        f"with the clients (load average {meta['load']:.1f} at the start). The time of one "
        f"request alone: {meta['solo']} more requests of the same mix from one client, "
        f"{meta['solo_errors']} errors, {meta['solo_wall']:.1f} s:",
        "",
        *_table(solo_rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=None, help="an indexed glassllm run folder")
    p.add_argument("--requests", type=int, default=1200)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--solo", type=int, default=300, help="requests from one client, after")
    p.add_argument("--index-tokens", type=int, default=262_144)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--keep", type=Path, default=None, help="build the run and the demo file here, kept"
    )
    p.add_argument("--out", type=Path, default=HERE / "LOAD.md")
    ns = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = ns.keep or Path(tmp)
        run = ns.run
        if run is None:
            run = folder / "glass_load"
            if not (run / "index.sqlite").exists():
                run = build_run(folder, ns.index_tokens)
        load(run, build_demo(folder), ns)


def load(run: Path, demo: Path, ns: argparse.Namespace) -> None:
    from saescope.analysis import FeatureIndex
    from saescope.explore.app import STATIC

    idx = FeatureIndex.open(run)
    info = idx.info
    idx.close()
    pages = sorted(p.name for p in STATIC.glob("*.html"))
    static = sorted(p.name for p in STATIC.iterdir() if p.suffix in (".js", ".css"))
    levels = len(json.loads(demo.read_text())["levels"])
    site = Site(int(info["d_sae"]), pages, static, levels)
    requests = plan(ns.requests, site, ns.seed)
    port = free_port()
    server = start_server(run, demo, port)
    try:
        base = f"http://127.0.0.1:{port}"
        warm = [request_for(route, random.Random(1), site) for route in WEIGHTS]
        warm_results, _ = asyncio.run(fire(base, warm, 1))
        bad = [r for r in warm_results if r["status"] != 200]
        if bad:
            raise SystemExit(f"warm-up failed: {bad}")
        load_avg = os.getloadavg()[0]
        results, wall = asyncio.run(fire(base, requests, ns.clients))
        solo_plan = plan(ns.solo, site, ns.seed + 1)
        solo, solo_wall = asyncio.run(fire(base, solo_plan, 1))
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = summary(results)
    errors = sum(r["status"] != 200 for r in results)
    solo_rows = summary(solo)
    meta = {
        "date": date.today().isoformat(),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "run": f"glassllm {info.get('hook')}, {info['architecture']} d_sae {info['d_sae']:,}, "
        f"{int(info['tokens']):,} tokens indexed",
        "requests": len(results),
        "clients": ns.clients,
        "errors": errors,
        "wall": wall,
        "load": load_avg,
        "solo": len(solo),
        "solo_errors": sum(r["status"] != 200 for r in solo),
        "solo_wall": solo_wall,
    }
    ns.out.write_text(report(rows, solo_rows, meta))
    print(ns.out.read_text())
    for r in [r for r in results if r["error"]][:10]:
        print("error:", json.dumps(r))


if __name__ == "__main__":
    main()
