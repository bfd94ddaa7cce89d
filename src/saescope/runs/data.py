"""`DataSpec`: a data source named completely (the seed article's synthetic task, an activation
file, an activation cache, or a model harvested on the fly with its hooks, text, context and
the text's token fingerprint), with `to_dict`/`from_dict`, `open(batch_size, seed)` for the
training stream and `held_out(tokens)` for the data set aside for evaluation."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from saescope.activations import ModelBatches, split, text_contexts
from saescope.data import ActivationCache, ActivationFile, ArticleTask, ArticleTaskConfig
from saescope.data.cache import CacheBatches, is_cache
from saescope.data.corpus import text_files
from saescope.data.stream import HELD_OUT_SEED_OFFSET, IndexedBatches
from saescope.errors import ConfigError, check_keys
from saescope.evaluate import model_batches
from saescope.models import MODELS, load_model
from saescope.models.hooks import HookPair

_TOKENISED: OrderedDict[tuple, tuple[Tensor, str]] = OrderedDict()
"""The last two texts tokenised, by model, context and files (with their sizes and times):
training then evaluating in one process, or several specs of one text, tokenise it once."""


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def model_ref(model: str | Path) -> str:
    """How a spec records a model: its name (saescope.models.MODELS), or its folder resolved."""
    name = str(model)
    folder = Path(name).expanduser()
    return str(folder.resolve()) if name not in MODELS and folder.is_dir() else name


def text_ref(text: str | Path | Sequence[str | Path] | None) -> tuple[str, ...] | None:
    """How a spec records its text: files and folders resolved (None: the default corpus)."""
    if isinstance(text, str | Path):
        text = [text]
    return tuple(str(Path(p).resolve()) for p in text) if text else None


KINDS = ("synthetic", "file", "cache", "model")
_FIELDS = {
    "synthetic": ("task", "seed"),
    "file": ("path", "seed"),
    "cache": ("path", "rows", "hook", "target", "seed", "model", "text", "fingerprint", "context"),
    "model": ("model", "text", "fingerprint", "context", "hook", "target", "seed"),
}
"""The fields that describe each kind of source (what `to_dict` writes)."""


@dataclass(frozen=True)
class DataSpec:
    """A data source, complete enough to open it again. Build one with `synthetic`, `file`,
    `cache`, `for_model` or `at`; `to_dict`/`from_dict` round-trip it through JSON."""

    kind: str
    """"synthetic", "file", "cache" or "model"."""
    path: str | None = None
    """The activation file or cache folder (absolute)."""
    model: str | None = None
    """A model's name (saescope.models.MODELS) or its folder (absolute)."""
    hook: str | None = None
    """The hook point of x: PATH (a module's output) or PATH:in (its input)."""
    target: str | None = None
    """A transcoder's target hook point (y); None: y is x."""
    text: tuple[str, ...] | None = None
    """Text files or folders (absolute); None: the default corpus."""
    context: int | None = None
    """Tokens per context."""
    seed: int = 0
    """Seed of the stream's draws (its shuffling or sampling)."""
    fingerprint: str | None = None
    """The text's token fingerprint: eval and resume refuse a text that changed."""
    task: ArticleTaskConfig | None = None
    """The synthetic task."""
    rows: int | None = None
    """Rows the cache held when the run started (resume refuses a cache that grew)."""

    def __post_init__(self) -> None:
        # The loaded model and tokenised text, once per spec: an attribute, not a field, so
        # equality, replace(), asdict() and pickling never carry them.
        object.__setattr__(self, "_memo", {})
        if self.kind not in KINDS:
            raise ConfigError(f"data kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind in ("file", "cache") and not self.path:
            raise ConfigError(f"a {self.kind} data source needs its path")
        if self.kind == "model" and not self.model:
            raise ConfigError("a model data source needs the model's name or folder")
        if self.kind == "cache" and not self.hook:
            raise ConfigError("give --hook, the cache's hook point (it holds several)")
        if self.kind == "synthetic" and self.task is None:
            object.__setattr__(self, "task", ArticleTaskConfig())
        if self.text is not None:
            text = [self.text] if isinstance(self.text, str | Path) else self.text
            object.__setattr__(self, "text", tuple(map(str, text)) or None)
        if self.kind in ("file", "cache") and not Path(self.path).is_absolute():  # type: ignore[arg-type]
            object.__setattr__(self, "path", str(Path(self.path).resolve()))  # type: ignore[arg-type]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_memo"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)
        object.__setattr__(self, "_memo", {})

    # ----- building ---------------------------------------------------------------------------

    @classmethod
    def synthetic(cls, task: ArticleTaskConfig | None = None, seed: int = 0) -> DataSpec:
        """The seed article's ground-truth task (its default settings when task is None)."""
        return cls("synthetic", task=task or ArticleTaskConfig(), seed=seed)

    @classmethod
    def file(cls, path: str | Path, seed: int = 0) -> DataSpec:
        """Activations in a .npy or .safetensors file."""
        return cls("file", path=str(Path(path).resolve()), seed=seed)

    @classmethod
    def cache(
        cls, path: str | Path, hook: str | None, target: str | None = None, seed: int = 0
    ) -> DataSpec:
        """An activation cache from `saescope harvest`, as it is now (its rows and source)."""
        cache = ActivationCache(path)
        src = cache.source
        return cls(
            "cache",
            path=str(cache.path.resolve()),
            rows=cache.n_rows,
            hook=hook,
            target=target,
            seed=seed,
            model=src.get("model"),
            text=src.get("text"),
            fingerprint=src.get("fingerprint"),
            context=src.get("context"),
        )

    @classmethod
    def for_model(
        cls,
        model: str | Path,
        hook: str | None = None,
        target: str | None = None,
        text: str | Path | Sequence[str | Path] | None = None,
        context: int = 128,
        seed: int = 0,
    ) -> DataSpec:
        """A model harvested on the fly on text (the default corpus when None). Loads the
        model and tokenises the text, to pin the text's fingerprint."""
        ref, texts = model_ref(model), text_ref(text)
        loose = cls("model", model=ref, hook=hook, target=target, text=texts, context=context)
        spec = dataclasses.replace(loose, seed=seed, fingerprint=loose._contexts()[1])
        spec._memo.update(loose._memo)  # the model and contexts, loaded once
        return spec

    @classmethod
    def at(
        cls,
        data: str | Path,
        hook: str | None = None,
        target: str | None = None,
        seed: int = 0,
        task: ArticleTaskConfig | None = None,
    ) -> DataSpec:
        """ "synthetic", an activation cache folder or an activation file, by what `data` is;
        hook and target apply to a cache only."""
        if is_cache(data):
            return cls.cache(data, hook, target, seed)
        given = [f"--{n}" for n, v in (("hook", hook), ("target", target)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to --model or a cache, not --data {data}")
        return cls.synthetic(task, seed) if str(data) == "synthetic" else cls.file(data, seed)

    # ----- JSON -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The kind and its fields, as JSON values."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in _FIELDS[self.kind]:
            value = getattr(self, name)
            if name == "task":
                value = dataclasses.asdict(value)
            elif name == "text" and value is not None:
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        kind = d.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"data kind must be one of {', '.join(KINDS)}, got {kind!r}")
        check_keys(d, ("kind", *_FIELDS[kind]), f"a {kind} data source")
        kw = {k: v for k, v in d.items() if k != "kind"}
        if kind == "synthetic":
            task = kw.get("task") or {}
            check_keys(task, [f.name for f in dataclasses.fields(ArticleTaskConfig)], "the task")
            kw["task"] = ArticleTaskConfig(**task)
        return cls(kind, **kw)

    # ----- opening ----------------------------------------------------------------------------

    @property
    def hooks(self) -> HookPair:
        if not self.hook:
            raise ConfigError("give --hook, the hook point to train on (saescope hooks MODEL)")
        return HookPair(self.hook, self.target)

    def load_model(self) -> tuple[nn.Module, Any]:
        """The model and its tokenizer (loaded once per spec), on the spec's device (`place`)."""
        if not self.model:
            raise ConfigError(f"{self.describe()} does not name its model; give --data FILE")
        if "model" not in self._memo:
            self._memo["model"] = load_model(self.model)
        self._memo["model"][0].to(self._memo.get("device", "cpu"))
        return self._memo["model"]

    def place(self, device: str) -> DataSpec:
        """Run the model on `device` from now on (not part of the spec: never saved)."""
        self._memo["device"] = device
        return self

    def contexts(self, part: str | None = None) -> Tensor:
        """The text's contexts (B, context): all of them, or the "train" or "test" split."""
        contexts = self._contexts()[0]
        return contexts if part is None else split(contexts, part)

    def tokens(self, part: str = "train") -> int:
        """Rows the text's "train" or "test" contexts give (the first position is dropped)."""
        contexts = self.contexts(part)
        return contexts.shape[0] * (contexts.shape[1] - 1)

    def _contexts(self) -> tuple[Tensor, str]:
        """Every context of the text and its fingerprint (checked against the pinned one)."""
        if "contexts" not in self._memo:
            context = self.context or 128
            files = text_files(self.text)
            key = (self.model, context, tuple((str(f), *_stamp(f)) for f in files))
            if key not in _TOKENISED:
                model, tok = self.load_model()
                _TOKENISED[key] = text_contexts(model, tok, self.text, context)
                while len(_TOKENISED) > 2:
                    _TOKENISED.popitem(last=False)
            _TOKENISED.move_to_end(key)
            contexts, fp = _TOKENISED[key]
            if self.fingerprint and fp != self.fingerprint:
                raise ConfigError(
                    f"the text {list(self.text) if self.text else 'of the default corpus'} "
                    "changed since training, so its held-out contexts are not the ones "
                    "set aside; restore it"
                )
            self._memo["contexts"] = (contexts, fp)
        return self._memo["contexts"]

    def open(self, batch_size: int = 1024, seed: int | None = None) -> IndexedBatches:
        """The training stream (batch i a pure function of i, so a run resumes anywhere)."""
        seed = self.seed if seed is None else seed
        if self.kind == "synthetic":
            return ArticleTask(self.task, batch_size, seed)  # type: ignore[arg-type]
        if self.kind == "file":
            return ActivationFile(self.path, batch_size, seed)  # type: ignore[arg-type]
        if self.kind == "cache":
            return CacheBatches(self.path, self.hooks.x, self.target, batch_size, seed)  # type: ignore[arg-type]
        model, _ = self.load_model()
        train_ctx = self.contexts("train")
        stream = ModelBatches(model, train_ctx, self.hooks.x, self.target, batch_size, seed)
        stream.fingerprint = self._contexts()[1]
        return stream

    def held_out(self, tokens: int = 65_536) -> HeldOut:
        """Data the run never trained on: a synthetic task's draws from another seed, or the
        held-out contexts of a model's text (also for a cache, which holds the training
        contexts only). An activation file has no held-out part."""
        if self.kind == "synthetic":
            task = ArticleTask(self.task, min(tokens, 8192), self.seed + HELD_OUT_SEED_OFFSET)  # type: ignore[arg-type]
            return HeldOut(task, features=task.features)
        if self.kind == "file":
            raise ConfigError(
                f"the run was trained on {self.path}, which has no held-out part; evaluate "
                "with --data FILE (activations it was not trained on)"
            )
        model, _ = self.load_model()
        contexts = self.contexts("test")
        batches = model_batches(model, contexts, self.hooks, tokens)
        return HeldOut(batches, model=model, contexts=contexts, hooks=self.hooks)

    def head(self, tokens: int) -> HeldOut:
        """The first `tokens` rows of a file or cache, unshuffled (for evaluation; a cache's
        rows are training rows, so `held_out` is False)."""
        if self.kind == "file":
            return HeldOut([ActivationFile(self.path).head(tokens)], held_out=None)  # type: ignore[arg-type]
        if self.kind != "cache":
            raise ConfigError(f"head takes a file or a cache, not {self.kind} data")
        cache = ActivationCache(self.path)  # type: ignore[arg-type]
        rows = {h: cache.head(h, tokens).float() for h in self.hooks.specs}
        return HeldOut([self.hooks.pick(rows)], held_out=False)

    def describe(self) -> str:
        """A few words naming the source."""
        if self.kind == "synthetic":
            return "the synthetic task"
        if self.kind == "model":
            return f"{self.model} at {self.hook}"
        return str(self.path)


@dataclass
class HeldOut:
    """Evaluation data: (x, y) batches, the true features of a synthetic task, and for a model
    the model and the held-out contexts (for CE loss recovered)."""

    batches: Iterable[tuple[Tensor, Tensor]]
    model: nn.Module | None = None
    contexts: Tensor | None = None
    hooks: HookPair | None = None
    features: Tensor | None = None
    held_out: bool | None = True
    """False: rows the run trained on; None: unknown (a file the user gave)."""
