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
a body over MAX_BODY bytes; the server keeps serving.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

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

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Callable[..., Any]) -> Any:
        size = request.headers.get("content-length", "0")
        if not re.fullmatch(r"\d{1,12}", size) or int(size) > MAX_BODY:
            return JSONResponse(
                {"detail": f"request body over {MAX_BODY} bytes (or a bad content-length)"},
                status_code=413,
            )
        return await call_next(request)


def create_app(runs: list[Path], demo: Path | None = None) -> FastAPI:
    """The app serving `runs` (run folders; each opened on first use) and, with `demo`, the
    seed demos' JSON file (read by the /api/seed routes, `app.state.demo`)."""
    states = load_runs([Path(r) for r in runs])
    app = FastAPI(title="saescope explore", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.runs = states
    app.state.demo = None if demo is None else Path(demo)
    _handlers(app)
    app.include_router(api.router, prefix="/api")
    app.include_router(seed_router)  # its routes are under /api/seed

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/static/index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


__all__ = ["MAX_BODY", "STATIC", "NotFound", "create_app"]
