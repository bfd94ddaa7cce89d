"""Serving the app: a socket bound first (so a port in use is a one-line error, and port 0
picks a free one), then uvicorn on it until Ctrl-C."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from saescope.errors import InputError


def bind(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one), so a browser opening the URL
    printed before uvicorn starts waits rather than fails; a one-line error when the address
    cannot be taken."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port {port} is not a port; give 0 to 65535 (0: any free one)")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # connections wait in the backlog until uvicorn takes over
    except OSError as e:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); give another --port "
            "(0: any free one) or --host"
        ) from None
    return sock


def url(sock: socket.socket) -> str:
    """The address a browser opens for a bound socket."""
    host, port = sock.getsockname()[:2]
    host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{host}:{port}/"


def serve(app: Any, sock: socket.socket) -> None:
    """Serve `app` on the bound socket until Ctrl-C or SIGTERM, the normal way to stop it
    (uvicorn finishes the requests in flight, then re-raises the signal: caught here)."""
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
