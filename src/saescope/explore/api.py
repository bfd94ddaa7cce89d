"""The JSON API of `saescope explore` (mounted under /api by `create_app`). Every route names
its run by the name the server gave it (`state.load_runs`) and, for a run with several SAEs,
its SAE; feature data come from the SAE's `FeatureIndex`, the prompt view from
`steer.tokens.token_activations` and steering from `steer.prompt.steer_prompt`, each model
call under the run's lock."""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from saescope.errors import InputError
from saescope.explore.state import NotFound, RunState
from saescope.steer import activation_matrix, steer_prompt, token_activations

MAX_TEXT = 20_000
"""The longest prompt taken, in characters (the model's context bounds it in tokens)."""
MAX_LIMIT = 500
"""The most search results one request returns."""
MAX_COLUMNS = 256
"""The most features one heatmap shows."""
MAX_NEW_TOKENS = 64
MAX_EDITS = 16

router = APIRouter()


def _state(request: Request, run: str | None) -> RunState:
    runs: dict[str, RunState] = request.app.state.runs
    if run is None:
        return next(iter(runs.values()))
    if run not in runs:
        raise NotFound(f"no run {run!r}; this server's runs: {', '.join(runs)}")
    return runs[run]


def _feature_id(text: str, d_sae: int) -> int:
    if not re.fullmatch(r"-?\d{1,12}", text.strip()):
        raise InputError(f"feature id {text[:40]!r} is not an integer; give e.g. /api/features/3")
    i = int(text)
    if not 0 <= i < d_sae:
        raise NotFound(f"no feature {i}: this SAE has {d_sae} features (ids 0 to {d_sae - 1})")
    return i


def _finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}")


@router.get("/runs")
def runs(request: Request) -> list[dict[str, Any]]:
    """The runs this server was started with, each SAE's index info (or why it has none)."""
    return [s.describe() for s in request.app.state.runs.values()]


@router.get("/features/{fid}")
def feature(request: Request, fid: str, run: str | None = None, sae: str | None = None) -> Any:
    """One feature's dashboard data: FeatureIndex.feature(id) plus "run" and "sae"."""
    state = _state(request, run)
    name = state.sae_name(sae)
    idx = state.index(name)
    i = _feature_id(fid, int(idx.info["d_sae"]))
    return {**idx.feature(i), "run": state.name, "sae": name}


@router.get("/search")
def search(
    request: Request,
    run: str | None = None,
    sae: str | None = None,
    token: str | None = None,
    text: str | None = None,
    order: str = "density",
    descending: bool = True,
    lo: float | None = None,
    hi: float | None = None,
    limit: int = Query(20, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0, le=10**9),
) -> dict[str, Any]:
    """Features by token (exact token text, e.g. " Queen"), by text in their examples, or
    else by density (order, lo, hi, limit, offset): {"by", "results": [...]}."""
    state = _state(request, run)
    idx = state.index(sae)
    if token is not None and text is not None:
        raise InputError("give token= or text=, not both")
    for key, value in (("token", token), ("text", text)):
        if value is not None and not value:
            raise InputError(f"{key}= is empty; give the text to search for")
        if value is not None and len(value) > 200:
            raise InputError(f"{key}= is {len(value)} characters long; give at most 200")
    if token is not None:
        return {"by": "token", "token": token, "results": idx.search_token(token, limit)}
    if text is not None:
        return {"by": "text", "text": text, "results": idx.search_text(text, limit)}
    _finite("lo", lo)
    _finite("hi", hi)
    got = idx.features(order, descending, lo, hi, limit, offset)
    return {"by": order, "results": got}


class PromptRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str | None = None
    sae: str | None = None
    text: str = Field(max_length=MAX_TEXT)
    top: int = Field(5, ge=1, le=50)


def _on_text(state: RunState, sae_name: str, fn: Any, text: str, *args: Any) -> Any:
    """fn(sae, model, tokenizer, hook, text, *args, outliers) on the run's model, under its
    lock (steer.tokens' token_activations or activation_matrix)."""
    run = state.run
    _, sae = run.sae(sae_name)
    if run.data is None or not run.data.model:
        raise InputError(f"run {state.name} was not trained on a model's activations")
    with state.lock:
        model, tokenizer = run.data.load_model()
        return fn(sae.eval(), model, tokenizer, run.data.hooks.x, text, *args, run.outlier_rule)


@router.post("/prompt")
def prompt(request: Request, body: PromptRequest) -> dict[str, Any]:
    """The features firing on each token of the text (one forward pass)."""
    state = _state(request, body.run)
    name = state.sae_name(body.sae)
    got = _on_text(state, name, token_activations, body.text, body.top)
    return {**got, "run": state.name, "sae": name}


class HeatmapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str | None = None
    sae: str | None = None
    text: str = Field(max_length=MAX_TEXT)
    columns: int = Field(32, ge=1, le=MAX_COLUMNS)


@router.post("/heatmap")
def heatmap(request: Request, body: HeatmapRequest) -> dict[str, Any]:
    """The Sparsity Explorer's tokens x features matrix of the text's most active features
    (steer.tokens.activation_matrix; one forward pass)."""
    state = _state(request, body.run)
    name = state.sae_name(body.sae)
    got = _on_text(state, name, activation_matrix, body.text, body.columns)
    return {**got, "run": state.name, "sae": name}


class EditRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0)
    value: float = Field(allow_inf_nan=False, ge=-1e6, le=1e6)


class SteerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run: str | None = None
    sae: str | None = None
    prompt: str = Field(min_length=1, max_length=MAX_TEXT)
    features: list[EditRequest] = Field(default_factory=list, max_length=MAX_EDITS)
    mode: str = "set"
    max_new_tokens: int = Field(20, ge=1, le=MAX_NEW_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=10.0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    top_tokens: int = Field(5, ge=1, le=50)


@router.post("/steer")
def steer(request: Request, body: SteerRequest) -> dict[str, Any]:
    """The prompt continued unsteered and with the features edited (saescope.steer's
    steer_prompt): {"prompt", "unsteered", "steered", "features", "run", "sae"}."""
    state = _state(request, body.run)
    name = state.sae_name(body.sae)
    edits = [(e.id, e.value) for e in body.features]
    run = state.run
    with state.lock:
        got = steer_prompt(
            run,
            edits,
            body.prompt,
            body.mode,
            body.max_new_tokens,
            body.temperature,
            body.seed,
            body.top_p,
            name,
            body.top_tokens,
        )
    return {**got, "run": state.name, "sae": name}
