"""Browser tests' plumbing: Debian's Chromium driven by Playwright, and an ASGI app served by
uvicorn on a free port of 127.0.0.1 in a background thread.

A machine without /usr/bin/chromium fails these tests (`make test` installs it); they never
skip and Playwright never downloads a browser."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
]
SCREENSHOTS = Path(
    os.environ.get("SAESCOPE_SCREENSHOTS") or Path(tempfile.gettempdir()) / "saescope-screenshots"
)
"""Where the browser tests save their screenshots: a temp folder, so that `make test` leaves the
checkout clean; `make screenshots` points it at docs/screenshots, the ones the README shows."""
SCREENSHOTS.mkdir(parents=True, exist_ok=True)


def launch(playwright: Any) -> Any:
    """Chromium, headless, from Debian's package; a clear failure when it is missing."""
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"{CHROMIUM} not found: the browser tests need Debian's chromium; run `make test` "
            "(it installs it) or `apt-get install -y chromium`"
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 at a free port for the block; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as saescope explore: no 40 ms
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
