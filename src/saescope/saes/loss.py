"""What a loss returns (`LossOutput`) and what the training loop tells it besides the batch
(`LossContext`): the types every architecture's `loss` speaks.

`Across` is a batch whose rows are spread over processes (data-parallel training): what a loss
needs of the whole batch beyond its own rows. Each process computes every loss term on its own
rows, as this process's part of the whole batch's term: the processes' parts, weighted by their
rows, average to the whole batch's term (and their gradients to its gradient). A mean over
tokens needs nothing more. AuxK's FVU divides by the whole batch's variance (`auxk.fvu`), and
BatchTopK keeps the whole batch's N*k largest activations (`batchtopk.batch_topk_activation`):
those ask `Across`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from saescope import metrics
from saescope.sparse import SparseCodes


class Across(Protocol):
    """A batch whose rows are spread over processes (data-parallel training): what a loss
    needs of the whole batch beyond its own rows. Each process contributes its rows' part."""

    rows: int
    """Rows of the whole batch, every process's together."""

    def sum(self, t: Tensor) -> Tensor:
        """t summed over the processes (a new tensor; t has no gradient)."""
        ...

    def min(self, t: Tensor) -> Tensor:
        """The smallest of the processes' t (a new tensor)."""
        ...

    def kth_largest(self, candidates: Tensor, k: int) -> Tensor:
        """The k-th largest value of all processes' candidates together (0-d), each process
        giving its own k largest values (or all it has, when fewer)."""
        ...


@dataclass
class LossContext:
    """What the training loop tells a loss besides the batch."""

    sparsity_scale: float = 1.0
    """Multiplier on the sparsity coefficient (its warm-up)."""
    dead: Tensor | None = None
    """(d_sae,) bool: latents that have not fired for the dead window (for AuxK)."""
    across: Across | None = None
    """The whole batch when its rows are spread over processes (data parallel); None: the
    batch is all here."""


@dataclass
class LossOutput:
    """A loss evaluation: the reconstruction, the features and each weighted loss term."""

    y_hat: Tensor
    f: Tensor | None
    """(N, d_sae) codes from the dense path; None from the sparse path (see `codes`)."""
    terms: dict[str, Tensor]
    """Named loss terms, coefficients applied; they sum to the total."""
    extras: dict[str, Tensor] = field(default_factory=dict)
    codes: SparseCodes | None = None
    """The codes in sparse form, from the sparse path."""

    @property
    def total(self) -> Tensor:
        return sum(self.terms.values())  # type: ignore[return-value]

    def dense_f(self) -> Tensor:
        """(N, d_sae) codes, detached, whichever path made them."""
        if self.f is not None:
            return self.f.detach()
        assert self.codes is not None
        return self.codes.dense()

    def l0(self) -> float:
        """Mean number of non-zero codes per token."""
        if self.codes is not None:
            return self.codes.l0()
        return metrics.l0(self.dense_f())

    def fired(self) -> Tensor:
        """(d_sae,) bool: latents with a non-zero code in the batch."""
        if self.codes is not None:
            return self.codes.fired()
        return torch.count_nonzero(self.dense_f(), dim=0) > 0
