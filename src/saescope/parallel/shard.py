"""A data-parallel process's share of a batch stream: rank r of W reads rows
[r N / W, (r + 1) N / W) of each batch i, through the source's `part` (a file or a cache reads
only those rows, a model runs only on the contexts that hold them), so the W shares of batch i
are, in rank order, exactly the batch one process would train on."""

from __future__ import annotations

from torch import Tensor

from saescope.data.stream import IndexedBatches
from saescope.errors import ConfigError


class Shard(IndexedBatches):
    """Rank `rank` of `size`'s rows of every batch of `stream`. It says the whole stream's
    shapes and batch size (`tokens_per_batch` is the whole batch's)."""

    def __init__(self, stream: IndexedBatches, rank: int, size: int) -> None:
        if stream.batch_size < size:
            raise ConfigError(
                f"the batch ({stream.batch_size} rows) is smaller than the {size} processes "
                "sharing it; use a larger --batch-size or fewer processes"
            )
        self.stream, self.rank, self.size = stream, rank, size
        self.seed, self.per_epoch = stream.seed, stream.per_epoch
        self.batch_size = n = stream.batch_size
        self.lo, self.hi = rank * n // size, (rank + 1) * n // size

    @property
    def d_in(self) -> int:
        return self.stream.d_in

    @property
    def d_out(self) -> int:
        return self.stream.d_out

    @property
    def y_is_x(self) -> bool:
        return self.stream.y_is_x

    @property
    def tokens_per_batch(self) -> int:
        return self.stream.tokens_per_batch

    def batch(self, i: int) -> tuple[Tensor, Tensor]:
        return self.stream.part(i, self.lo, self.hi)
