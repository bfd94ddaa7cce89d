"""Training: the one loop (`loop.py`), its config and schedules (`config.py`), one optimiser
step (`optim.py`), checkpoints and resume (`checkpoint.py`), stopping on SIGINT or SIGTERM
(`interrupt.py`)."""

from saescope.training.checkpoint import CHECKPOINT_FILE, METRICS_FILE
from saescope.training.config import NEUTRAL_FIELDS, BadBatchError, TrainConfig
from saescope.training.interrupt import Interrupted
from saescope.training.loop import TrainResult, folded_copy, sae_dirs, train
from saescope.training.optim import adam_step

__all__ = [
    "CHECKPOINT_FILE",
    "METRICS_FILE",
    "NEUTRAL_FIELDS",
    "BadBatchError",
    "Interrupted",
    "TrainConfig",
    "TrainResult",
    "adam_step",
    "folded_copy",
    "sae_dirs",
    "train",
]
