"""From a model and text to activations: contexts with a held-out split, the resumable harvest
into an on-disk cache, and on-the-fly batches for training straight from the model.

Every 20th context (index % 20 == 19) is held out: training never sees it, evaluation uses
only those. A context is `context` tokens of the packed text; the first position of each is
dropped from the activations (no left context; where a BOS token would sit).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saescope.data.cache import CacheWriter
from saescope.data.corpus import fingerprint, read_texts
from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError, InputError
from saescope.models import max_context
from saescope.models.harvest import harvest, pack
from saescope.models.hooks import HookPair

HELD_OUT_EVERY = 20


def split(contexts: Tensor, part: str) -> Tensor:
    """The training contexts or the held-out ones ("train" / "test")."""
    held = torch.arange(contexts.shape[0]) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    if part not in ("train", "test"):
        raise ConfigError(f"part must be 'train' or 'test', got {part!r}")
    out = contexts[held if part == "test" else ~held]
    if out.shape[0] == 0:
        raise InputError(
            f"the text gives {contexts.shape[0]} contexts, too few for a {part} split "
            f"(every {HELD_OUT_EVERY}th is held out); give more text or a shorter --context"
        )
    return out


def text_contexts(
    model: nn.Module, tokenizer: Any, texts: Sequence[str | Path] | None, context: int
) -> tuple[Tensor, str]:
    """All contexts of the text (the default corpus when None) and the token fingerprint."""
    limit = max_context(model)
    if limit is not None and context > limit:
        raise ConfigError(f"--context {context} is longer than the model's {limit} positions")
    if context < 2:
        raise ConfigError(f"--context must be >= 2 tokens, got {context}")
    ids: list[int] = []
    for doc in read_texts(texts):
        ids.extend(tokenizer.encode(doc))
    return pack(ids, context), fingerprint(ids)


def harvest_to_cache(
    model: nn.Module,
    contexts: Tensor,
    hooks: Sequence[str],
    out: str | Path,
    source: dict[str, Any],
    batch_size: int = 32,
    shard_contexts: int = 256,
    progress: bool = True,
    dtype: str | None = None,
) -> CacheWriter:
    """Harvest `contexts` (the training split) into the cache at `out`, resuming after the
    last complete shard; a larger `contexts` than last time grows the cache. dtype: what the
    cache stores (`data.shards.CACHE_DTYPES`; None: float32, or an existing cache's own)."""
    writer = CacheWriter(out, {**source, "hooks": list(hooks)}, shard_contexts, dtype)
    start = writer.contexts_done
    bar = tqdm(
        total=contexts.shape[0], initial=start, disable=not progress, desc="harvest", unit="ctx"
    )
    for rows in harvest(model, contexts[start:], hooks, batch_size, first_context=start):
        n = int(rows["contexts"][-1]) - int(rows["contexts"][0]) + 1
        writer.add(rows, n)
        bar.update(n)
    writer.flush()
    bar.close()
    return writer


class ModelBatches(IndexedBatches):
    """(x, y) batches harvested on the fly: batch i runs the model on `batch_size //
    (context - 1)` contexts drawn without replacement from a per-epoch permutation."""

    def __init__(
        self,
        model: nn.Module,
        contexts: Tensor,
        x_hook: str,
        y_hook: str | None = None,
        batch_size: int = 4096,
        seed: int = 0,
    ) -> None:
        self.contexts, self.seed = contexts, seed
        self.fingerprint: str | None = None  # of the text, when the caller knows it
        self.model, self.hooks = model, HookPair(x_hook, y_hook)
        per_context = contexts.shape[1] - 1
        self.contexts_per_batch = max(1, min(batch_size // per_context, contexts.shape[0]))
        self.batch_size = self.contexts_per_batch * per_context
        self.per_epoch = contexts.shape[0] // self.contexts_per_batch
        x, y = self._rows(contexts[:1])
        self._d_in, self._d_out = x.shape[-1], y.shape[-1]

    @property
    def d_in(self) -> int:
        return self._d_in

    @property
    def d_out(self) -> int:
        return self._d_out

    @property
    def y_is_x(self) -> bool:
        return self.hooks.y is None

    def _rows(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.hooks.pick(next(harvest(self.model, ids, self.hooks.specs, ids.shape[0])))

    @functools.lru_cache(maxsize=2)  # noqa: B019 - two permutations, freed with the object
    def _perm(self, epoch: int) -> Tensor:
        return torch.randperm(self.contexts.shape[0], generator=self.generator(epoch))

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        return self.part(i, 0, self.batch_size)

    def part(self, i: int, lo: int, hi: int) -> tuple[Tensor, Tensor]:
        """Rows [lo, hi) of batch i: the model runs only on the contexts that hold them."""
        x, y = self.hooks.pick(self.rows_at(i, lo, hi, self.hooks.specs))
        return x, y

    def rows_at(self, i: int, lo: int, hi: int, specs: Sequence[str]) -> dict[str, Tensor]:
        """Rows [lo, hi) of batch i at each hook point of `specs` ({spec: (hi - lo, d)}),
        from one forward pass over the contexts that hold them (several hook points trained
        at once: `runs.layers`)."""
        epoch, j = divmod(i, self.per_epoch)
        n, per_context = self.contexts_per_batch, self.contexts.shape[1] - 1
        ids = self.contexts[self._perm(epoch)[j * n : (j + 1) * n]]
        first, last = lo // per_context, -(-hi // per_context)  # the contexts holding the rows
        held = ids[first:last]
        rows = next(harvest(self.model, held, list(specs), held.shape[0]))
        a, b = lo - first * per_context, hi - first * per_context
        return {s: rows[s][a:b] for s in specs}
