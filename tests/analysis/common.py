"""What the index tests share: a small classes index built from a random TopK SAE, and the
brute-force activations it indexes."""

import torch

from saescope.analysis import IndexConfig, index_classes
from tests.steer.common import random_topk

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
N, D_IN, D_SAE, K = 700, 8, 24, 4
CFG = IndexConfig(top=6, samples=2, buckets=12, low=-4, intervals=3, interval_examples=3)
CFG = CFG.__class__(**{**CFG.__dict__, "batch_size": 1, "cofire_tokens": 1024})


def classes_data(seed: int = 0):
    """(sae, acts (N, D_IN), labels (N,)): inputs whose class shifts their mean, so some
    features prefer a class."""
    sae = random_topk(D_IN, D_SAE, K, seed=seed, spread=0.6)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (N,), generator=g)
    centres = torch.randn(len(CLASSES), D_IN, generator=g) * 2
    acts = centres[labels] + torch.randn(N, D_IN, generator=g)
    return sae, acts, labels


def build(folder, seed: int = 0, cfg: IndexConfig = CFG):
    sae, acts, labels = classes_data(seed)
    return index_classes(folder, sae, acts, labels, CLASSES, cfg), sae, acts, labels
