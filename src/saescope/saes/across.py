"""A batch whose rows are spread over processes (data-parallel training): what a loss needs of
the whole batch beyond its own rows (`LossContext.across`).

Each process computes every loss term on its own rows, as this process's part of the whole
batch's term: the processes' parts, weighted by their rows, average to the whole batch's term
(and their gradients to its gradient). A mean over tokens needs nothing more. AuxK's FVU
divides by the whole batch's variance (`auxk.fvu`), and BatchTopK keeps the whole batch's
N*k largest activations (`batchtopk.batch_topk_activation`): those ask `Across`.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor


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
