"""The feature index: for every feature of an SAE, its firing density, activation histogram,
top activating examples with per-token activations, samples from several activation
intervals, top and bottom direct-logit tokens (language models), most co-firing features and
nearest decoder directions, built streaming in one pass with bounded memory (resumable after a
kill) into one SQLite file in the SAE's folder, and read from any thread (`FeatureIndex`).
docs/INDEX.md describes the file and each quantity. `export_neuronpedia` writes features in
Neuronpedia's upload layout (docs/EXPORT.md); `check_features` checks chosen feature ids."""

from saescope.analysis.config import IndexConfig
from saescope.analysis.index import FeatureIndex, index_path
from saescope.analysis.neuronpedia import check_features, export_neuronpedia
from saescope.analysis.run import index_classes, index_run, run_contexts

__all__ = [
    "FeatureIndex",
    "IndexConfig",
    "check_features",
    "export_neuronpedia",
    "index_classes",
    "index_path",
    "index_run",
    "run_contexts",
]
