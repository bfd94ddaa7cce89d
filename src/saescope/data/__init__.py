"""Data: synthetic ground truth, activation files and the activation cache, as streams of
(x, y) batches.

A batch stream is any iterable of `(x, y)` tensor pairs (y is x for an SAE). saescope's own
streams are `IndexedBatches`: batch i is a pure function of i (`iter_from(start)` lets a
resumed run jump straight to batch `start`), and each says `d_in`, `d_out`, `y_is_x` and
`tokens_per_batch` the same way.
"""

from saescope.data.cache import ActivationCache, CacheBatches, is_cache
from saescope.data.files import ActivationFile
from saescope.data.stream import IndexedBatches, RowBatches
from saescope.data.synthetic import (
    ArticleTask,
    ArticleTaskConfig,
    CorrelatedTask,
    CorrelatedTaskConfig,
    GroundTruthTask,
    HierarchicalTask,
    HierarchicalTaskConfig,
)

__all__ = [
    "ActivationCache",
    "ActivationFile",
    "ArticleTask",
    "ArticleTaskConfig",
    "CacheBatches",
    "CorrelatedTask",
    "CorrelatedTaskConfig",
    "GroundTruthTask",
    "HierarchicalTask",
    "HierarchicalTaskConfig",
    "IndexedBatches",
    "RowBatches",
    "is_cache",
]
