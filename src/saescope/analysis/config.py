"""`IndexConfig`: what the feature index keeps of each feature, and how it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saescope.errors import ConfigError

NEUTRAL = ("checkpoint_seconds", "checkpoint_batches")
"""Fields that change how a build runs, not what it stores (a build resumes across them)."""


@dataclass(frozen=True)
class IndexConfig:
    tokens: int | None = 1_000_000
    """Tokens to index: the held-out text first, then the training text (None: all of it).
    A million by default: a feature of density 1e-5 fires about ten times in it, and the
    build's time stays bounded on a large corpus (bench/INDEX.md times a million tokens)."""
    top: int = 16
    """Top activating examples kept per feature (at most one per context)."""
    before: int = 16
    """Tokens shown before an example's token."""
    after: int = 4
    """Tokens shown after an example's token."""
    buckets: int = 24
    """Activation buckets sampled for the intervals: octaves [2^(low + b), 2^(low + b + 1));
    the first takes everything below, the last everything above."""
    low: int = -8
    """The first bucket's upper edge is 2^(low + 1)."""
    samples: int = 3
    """Examples kept per bucket (a uniform sample: those of largest hash priority)."""
    intervals: int = 5
    """Intervals a feature's page shows (its non-empty buckets split into this many runs)."""
    interval_examples: int = 5
    """Examples shown per interval."""
    hist_bins: int = 256
    """Log-spaced histogram bins from 2^hist_low to 2^-hist_low (8 per octave at 256, 16)."""
    hist_low: int = -16
    """The histogram's lower edge is 2^hist_low (smaller activations go into the first bin)."""
    hist_shown: int = 40
    """At most this many histogram bins on a page (adjacent bins merged)."""
    cofire_tokens: int = 32_768
    """Tokens whose active sets are sampled for co-firing (uniformly, by hash priority)."""
    cofire_active: int = 64
    """At most this many of a sampled token's active features (the largest) are kept."""
    neighbours: int = 10
    """Nearest decoder directions per feature."""
    cofiring: int = 10
    """Most co-firing features per feature."""
    logits: int = 10
    """Top and bottom direct-logit tokens per feature."""
    batch_size: int = 8
    """Contexts (or inputs x 128 for classes) per forward pass."""
    checkpoint_seconds: float = 60.0
    """Seconds between checkpoints of the streaming state."""
    checkpoint_batches: int = 0
    """Also checkpoint every this many batches (0: by time only)."""

    def __post_init__(self) -> None:
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(
                f"--tokens must be at least 1 (or 0 for all the text), got {self.tokens}"
            )
        positive = ("top", "buckets", "samples", "intervals", "interval_examples", "hist_bins")
        positive += ("hist_shown", "cofire_tokens", "cofire_active", "batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("before", "after", "neighbours", "cofiring", "logits", "checkpoint_batches"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)}")

    @property
    def width(self) -> int:
        """Tokens in an example's window."""
        return self.before + 1 + self.after

    def stored(self) -> dict[str, Any]:
        """The fields that decide what the index holds (a checkpoint resumes only with these)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in NEUTRAL}
