"""`create_app`: the web app of `saescope explore`. The pages are plain HTML/CSS/JS files in
`static/` (no CDN, no build step), served under /static/; they call the JSON API under /api/:

    GET  /api/runs                          the runs and their SAEs (with each index's info)
    GET  /api/features/{id}?run=&sae=       one feature's dashboard (FeatureIndex.feature)
    GET  /api/search?token= | text= | order=&lo=&hi=&limit=&offset=   find features
    POST /api/prompt   {run, sae, text, top}                 features on each token
    POST /api/heatmap  {run, sae, text, columns}    tokens x the text's most active features
    POST /api/steer    {run, sae, prompt, features, mode, ...}  continuations side by side
    /api/seed/...      the seed's two demos (saescope.explore.seed)

Errors are JSON {"detail": "one line"}: 404 for an unknown run, SAE or feature, 400 for a
request the library refuses, 422 for a malformed one (a non-finite number among them), 413 for
a body over MAX_BODY bytes (counted as it arrives, so a chunked body is cut off too), 400 for
a Host header that is not this machine's loopback name or the address the server listens on
(`allowed_hosts`: a DNS rebinding page gets nothing); the server keeps serving.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saescope.errors import SaescopeError
from saescope.explore import api
from saescope.explore.seed import router as seed_router
from saescope.explore.state import NotFound, load_runs

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 1 << 20
"""The largest request body taken (bytes); larger ones get 413."""


def _one_line(exc: RequestValidationError) -> str:
    """A validation error as one line: where, then what."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(SaescopeError)
    async def refused(_: Request, exc: SaescopeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def failed(_: Request, exc: Exception) -> JSONResponse:  # a bug: say so, in JSON
        message = f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
        return JSONResponse({"detail": message}, status_code=500)


class BodyTooLarge(HTTPException):
    """A request body over MAX_BODY bytes (413); raised while the body arrives."""

    def __init__(self, limit: int = MAX_BODY) -> None:
        super().__init__(413, f"request body over {limit} bytes; send at most {limit}")


class LimitBody:
    """ASGI middleware: a request body over `limit` bytes gets 413 {"detail": ...}, said at
    once when its Content-Length (or a malformed one) says so, else as soon as the bytes
    received pass the limit (a chunked body has no Content-Length), so no more than about
    `limit` bytes of a body are ever held."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = Headers(scope=scope).get("content-length")
        if size is not None and (not re.fullmatch(r"\d{1,12}", size) or int(size) > self.limit):
            await _too_large(scope, receive, send, self.limit)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:  # raised outside a route (a route's error handler answers it)
            if started:
                raise
            await _too_large(scope, receive, send, self.limit)


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    detail = BodyTooLarge(limit).detail
    await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
"""The names this machine answers to that the app always accepts in a request's Host."""


def allowed_hosts(hosts: Sequence[str] = ()) -> list[str]:
    """The Host header values the app accepts: this machine's loopback names and `hosts`
    (the address the server listens on; an IPv6 address also in brackets, as a Host header
    writes it). A wildcard address (0.0.0.0, ::) adds this machine's name and addresses.
    Any other Host gets 400: a page on another site that a DNS rebinding points at this
    server names its own site there."""
    out = list(LOCAL_HOSTS)
    for host in hosts:
        if host in ("0.0.0.0", "::", ""):
            out += _machine_names()
        else:
            out += [host, f"[{host}]"] if ":" in host and not host.startswith("[") else [host]
    return list(dict.fromkeys(h.lower() for h in out))


def _machine_names() -> list[str]:
    """This machine's host name, full name and IPv4 addresses (what a browser elsewhere on
    the network uses to reach a server listening on every address)."""
    names = [socket.gethostname(), socket.getfqdn()]
    try:
        names += socket.gethostbyname_ex(socket.gethostname())[2]
    except OSError:
        pass
    return names


def create_app(
    runs: list[Path],
    demo: Path | None = None,
    hosts: Sequence[str] = (),
    model: str | None = None,
    hook: str | None = None,
) -> FastAPI:
    """The app serving `runs` (run folders, or peer libraries' SAE folders, whose model and
    hook point `model` and `hook` give or override; each opened on first use) and, with `demo`, the
    seed demos' JSON file (read by the /api/seed routes, `app.state.demo`). It answers only
    requests whose Host is this machine's loopback name or one of `hosts` (`allowed_hosts`;
    give the address the server listens on), and takes bodies of at most MAX_BODY bytes."""
    states = load_runs([Path(r) for r in runs], model, hook)
    app = FastAPI(title="saescope explore", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runs = states
    app.state.demo = None if demo is None else Path(demo)
    _handlers(app)
    app.add_middleware(LimitBody, limit=MAX_BODY)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(hosts))
    app.include_router(api.router, prefix="/api")
    app.include_router(seed_router)  # its routes are under /api/seed

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/static/index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


__all__ = [
    "LOCAL_HOSTS",
    "MAX_BODY",
    "STATIC",
    "BodyTooLarge",
    "LimitBody",
    "NotFound",
    "allowed_hosts",
    "create_app",
]
