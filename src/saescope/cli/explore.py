"""`saescope explore [RUN ...]`: a local web app on the runs' features (a feature browser
with dashboards, a prompt view, a steering playground and the seed's demos), served on
127.0.0.1 until Ctrl-C; it prints the URL to open. With no RUN: the seed demos and their
indexed classifier run (built when missing)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from saescope.cli import peer
from saescope.errors import ConfigError

DEMO_PATH = Path("runs") / "demo" / "seed_demos.json"
"""The seed demos' data by default (`experiments.seed_demos.DEFAULT_PATH`, named here so the
parser is built without importing the web app and the experiments: every command starts
faster)."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    e = sub.add_parser(
        "explore", help="browse runs' features, prompts and steering in a local web app"
    )
    e.add_argument(
        "runs",
        nargs="*",
        metavar="RUN",
        help="run folders (index each: saescope index RUN); none: the seed demos' run",
    )
    e.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    e.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    e.add_argument(
        "--demo",
        default=None,
        help=f"the seed demos' data (default {DEMO_PATH}, built when missing)",
    )
    e.add_argument("--no-demo", action="store_true", help="serve no seed demo (build nothing)")
    peer.add_args(e)
    return e


def _demo(ns: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """The seed demos' file (built when missing) and the runs to serve: those given, plus the
    demo's classifier run when it was indexed (the Sparsity Explorer links to it)."""
    if ns.no_demo:
        if not ns.runs:
            raise ConfigError(
                "--no-demo with no RUN leaves nothing to serve; give a RUN folder or drop "
                "--no-demo (then the seed demos are served)"
            )
        return None, list(ns.runs)
    from saescope.experiments import seed_demos  # heavy (matplotlib, models): only when run

    demo = seed_demos.ensure(ns.demo)
    extra = demo.parent / seed_demos.CLASSIFIER_RUN
    given = {Path(r).resolve() for r in ns.runs}
    more = [str(extra)] if extra.is_dir() and extra.resolve() not in given else []
    if not ns.runs and not more:
        raise ConfigError(
            f"{demo} has no indexed classifier run beside it ({extra}); delete {demo} and run "
            "`saescope explore` again to rebuild both, or give a RUN folder"
        )
    return demo, [*ns.runs, *more]


def run(ns: argparse.Namespace) -> int:
    from saescope.explore import create_app  # heavy (FastAPI): only when run
    from saescope.explore.serve import bind, serve, url

    demo, runs = _demo(ns)
    app = create_app(runs, demo, [ns.host], ns.model, ns.hook)
    sock = bind(ns.host, ns.port)
    if ns.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"saescope: warning: listening on {ns.host}: other machines can reach it",
            file=sys.stderr,
        )
    print(
        f"saescope explore: {', '.join(app.state.runs)} at {url(sock)} (Ctrl-C stops)", flush=True
    )
    serve(app, sock)
    return 0
