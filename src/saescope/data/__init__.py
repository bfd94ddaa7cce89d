"""Data: synthetic ground truth and activation files, as streams of (x, y) batches.

A batch stream is any iterable of `(x, y)` tensor pairs (y is x for an SAE). A stream that also
has `iter_from(start)` lets a resumed training run jump straight to batch `start`.
"""

from saescope.data.files import ActivationFile
from saescope.data.synthetic import (
    CorrelatedTask,
    CorrelatedTaskConfig,
    HierarchicalTask,
    HierarchicalTaskConfig,
    SeedTask,
    SeedTaskConfig,
)

__all__ = [
    "ActivationFile",
    "CorrelatedTask",
    "CorrelatedTaskConfig",
    "HierarchicalTask",
    "HierarchicalTaskConfig",
    "SeedTask",
    "SeedTaskConfig",
]
