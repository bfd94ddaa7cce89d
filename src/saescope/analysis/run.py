"""Building an index: `index_run` for a model run's SAE (contexts of its held-out text, then of
its training text), `index_classes` for an SAE on labelled inputs (each input one example,
its "token" its class name). Both stream batches through the SAE into an `IndexState`,
checkpoint it every `checkpoint_seconds` (and on Ctrl-C), and write the index file at the end;
run again after a kill, a build resumes at its last checkpoint and ends with the same index."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saescope.analysis.build import Batch, IndexState
from saescope.analysis.config import IndexConfig
from saescope.analysis.pages import Relations, feature_rows
from saescope.analysis.relations import cofiring, direct_logits, neighbours
from saescope.analysis.store import FILE, FORMAT_VERSION, built, write
from saescope.data.outliers import OutlierRule
from saescope.errors import InputError
from saescope.models.harvest import harvest
from saescope.runs import Run
from saescope.saes import SAE

CHECKPOINT = "index_checkpoint.safetensors"
DEFAULT = IndexConfig()
CLASS_BATCH = 128
"""Inputs per batch of index_classes: batch_size x this."""


def fingerprint(*tensors: Tensor) -> str:
    """sha256 of the tensors' bytes: which SAE (or data) a checkpoint belongs to."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _sae_info(name: str, sae: SAE) -> dict[str, Any]:
    return {"sae": name, "architecture": sae.cfg.name, "d_sae": sae.cfg.d_sae, "d_in": sae.cfg.d_in}


def run_contexts(run: Run, tokens: int | None) -> Tensor:
    """The contexts to index: the held-out ones, then the training ones; enough for about
    `tokens` tokens (the first position of each is dropped), or all."""
    held = run.held_out_contexts()
    assert run.data is not None
    contexts = torch.cat([held, run.data.contexts("train")])
    if tokens is not None:
        contexts = contexts[: max(1, math.ceil(tokens / (contexts.shape[1] - 1)))]
    return contexts


def index_run(
    run: Run, sae: str | None = None, cfg: IndexConfig = DEFAULT, progress: bool = True
) -> Path:
    """Build (or resume, or find already built) the index of one SAE of a model run, in its
    folder; returns the index file's path."""
    name, chosen = run.sae(sae)
    contexts = run_contexts(run, cfg.tokens)
    assert run.data is not None
    model, tokenizer = run.data.load_model()
    hook = run.data.hooks.x
    src = {"kind": "lm", "model": run.data.model, "hook": hook, "contexts": contexts.shape[0]}
    src.update(positions=contexts.shape[1], text=run.data.fingerprint)
    info = {**_sae_info(name, chosen), "kind": "lm", "model": run.data.model, "hook": hook}

    def batches(start: int) -> Iterator[Batch]:
        return _lm_batches(model, contexts, hook, run.outlier_rule, cfg.batch_size, start, chosen)

    decode = lambda i: tokenizer.decode([i])  # noqa: E731
    return _build(
        run.dirs[name] / FILE, chosen, contexts, batches, cfg, src, info, decode, model, progress
    )


def _lm_batches(
    model: nn.Module,
    contexts: Tensor,
    hook: str,
    rule: OutlierRule | None,
    batch_size: int,
    start: int,
    sae: SAE,
) -> Iterator[Batch]:
    first = start * batch_size
    got_all = harvest(model, contexts[first:], [hook], batch_size, first_context=first)
    for b, got in enumerate(got_all):
        x, ctx, pos = got[hook], got["contexts"], got["positions"]
        if x.shape[1] != sae.cfg.d_in:
            raise InputError(
                f"the SAE takes d_in {sae.cfg.d_in} but hook {hook} has width {x.shape[1]}"
            )
        set_aside = 0
        if rule is not None:
            keep = rule.keep(x, x)
            set_aside = int((~keep).sum())
            x, ctx, pos = x[keep], ctx[keep], pos[keep]
        lo = first + b * batch_size
        yield Batch(x, ctx, pos, lo, min(batch_size, contexts.shape[0] - lo), set_aside)


def index_classes(
    out: str | Path,
    sae: SAE,
    acts: Tensor,
    labels: Tensor,
    classes: list[str],
    cfg: IndexConfig = DEFAULT,
    progress: bool = False,
) -> Path:
    """Index an SAE on labelled inputs: acts (n, d_in), labels (n,) class ids into `classes`.
    Each input is one example whose one token is its class name. `out`: a folder (the index
    goes in out/index.sqlite) or the file."""
    acts, labels = torch.as_tensor(acts), torch.as_tensor(labels)
    n = acts.shape[0] if acts.dim() == 2 else 0
    if n == 0 or acts.shape[1] != sae.cfg.d_in:
        raise InputError(f"acts must be (n >= 1, d_in {sae.cfg.d_in}), got {tuple(acts.shape)}")
    if labels.shape != (n,) or labels.dtype.is_floating_point:
        raise InputError(
            f"labels must be ({n},) integers, got {tuple(labels.shape)} {labels.dtype}"
        )
    if not classes or int(labels.min()) < 0 or int(labels.max()) >= len(classes):
        raise InputError(
            f"labels must be class ids from 0 to {len(classes) - 1} (len(classes) - 1)"
        )
    path = Path(out)
    path = path / FILE if path.suffix != ".sqlite" else path
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = dataclasses.replace(cfg, before=0, after=0, tokens=None)
    step = cfg.batch_size * CLASS_BATCH
    acts = acts.float()

    def batches(start: int) -> Iterator[Batch]:
        for lo in range(start * step, n, step):
            idx = torch.arange(lo, min(n, lo + step))
            yield Batch(acts[idx], idx, torch.zeros_like(idx), lo, idx.numel())

    src = {"kind": "classes", "data": fingerprint(acts, labels), "classes": list(classes)}
    info = {**_sae_info(path.parent.name, sae), "kind": "classes", "model": None, "hook": None}
    decode = lambda i: classes[i]  # noqa: E731
    return _build(path, sae, labels[:, None], batches, cfg, src, info, decode, None, progress)


def _build(
    path: Path,
    sae: SAE,
    contexts: Tensor,
    batches: Callable[[int], Iterator[Batch]],
    cfg: IndexConfig,
    src: dict[str, Any],
    info: dict[str, Any],
    decode: Callable[[int], str],
    model: nn.Module | None,
    progress: bool,
) -> Path:
    sae = sae.eval()
    params = [p for _, p in sorted(sae.state_dict().items())]
    meta = {"sae": fingerprint(*params), "source": src, "config": cfg.stored()}
    meta["format_version"] = FORMAT_VERSION
    if built(path, meta):
        return path
    ckpt = path.with_name(CHECKPOINT)
    state = IndexState.resume(ckpt, meta, sae.cfg.d_sae, contexts.shape[1], cfg)
    per_batch = cfg.batch_size if info["kind"] == "lm" else cfg.batch_size * CLASS_BATCH
    n_batches = -(-contexts.shape[0] // per_batch)
    bar = tqdm(total=n_batches, initial=state.batches, disable=not progress, unit="batch")
    bar.set_description("indexing" if state.batches == 0 else f"resumed at batch {state.batches}")
    last = time.monotonic()
    p = sae.W_dec
    clean = True  # the state holds whole batches only (not so while a batch is being added)
    try:
        with torch.no_grad():
            for b in batches(state.batches):
                f = sae.encode(b.x.to(p.device, p.dtype)).float().cpu()
                clean = False
                state.add(f, b)
                clean = True
                bar.update(1)
                every = cfg.checkpoint_batches and state.batches % cfg.checkpoint_batches == 0
                if every or time.monotonic() - last >= cfg.checkpoint_seconds:
                    state.save(ckpt, meta)
                    last = time.monotonic()
    except KeyboardInterrupt:
        if clean:  # else half a batch is in: the last checkpoint on disk is the one to resume
            state.save(ckpt, meta)
        raise
    finally:
        bar.close()
    if state.tokens == 0:
        raise InputError("every token was set aside as an outlier token; nothing to index")
    state.save(ckpt, meta)
    with torch.no_grad():
        rel = Relations(
            neighbours(sae.W_dec, cfg.neighbours),
            cofiring(
                state.sample.feats[torch.isfinite(state.sample.prio)], sae.cfg.d_sae, cfg.cofiring
            ),
            None if model is None else direct_logits(sae.W_dec, model, cfg.logits),
        )
    info = {**info, "tokens": state.tokens, "examples": int(contexts.shape[0])}
    info.update(set_aside=state.set_aside, build=meta)
    extra = (
        []
        if rel.logits is None
        else torch.cat([rel.logits[0][0], rel.logits[1][0]]).unique().tolist()
    )
    rows = feature_rows(state, contexts, rel)
    bar = tqdm(rows, total=sae.cfg.d_sae, disable=not progress, unit="feature", desc="writing")
    with bar:
        write(path, info, bar, decode, extra)
    ckpt.unlink(missing_ok=True)
    return path


__all__ = ["index_classes", "index_run", "run_contexts"]
