"""Acting on features inside a running model: interventions at hook points (`FeatureEdits`
with the SAE's error term added back, `AddVector`), applied by the `steering` context manager
in any forward pass or generation; feature effects (direct logits, ablation, attribution); and
`steer_prompt`, what `saescope steer` prints; the features specific to a word (`token_features`,
what `saescope features` prints), the features on each token of a text (`token_activations`,
the prompt view of `saescope explore`; `activation_matrix`, its heatmap) and the clamp sweep of
the Golden Gate experiment."""

from saescope.steer.attribution import Attribution, attribute, true_ablation
from saescope.steer.edits import MODES, Edit
from saescope.steer.effects import Ablation, LogitEffect, ablate, direct_logits, logit_effects
from saescope.steer.intervene import (
    AddVector,
    FeatureEdits,
    Intervention,
    decoder_direction,
    steering,
)
from saescope.steer.prompt import steer_prompt
from saescope.steer.search import TokenFeatures, search_run, token_features, top_features
from saescope.steer.sweep import Probe, Sweep, clamp_sweep
from saescope.steer.tokens import activation_matrix, token_activations

__all__ = [
    "MODES",
    "Ablation",
    "AddVector",
    "Attribution",
    "Edit",
    "FeatureEdits",
    "Intervention",
    "LogitEffect",
    "Probe",
    "Sweep",
    "TokenFeatures",
    "ablate",
    "activation_matrix",
    "attribute",
    "clamp_sweep",
    "decoder_direction",
    "direct_logits",
    "logit_effects",
    "search_run",
    "steer_prompt",
    "steering",
    "token_activations",
    "token_features",
    "top_features",
    "true_ablation",
]
