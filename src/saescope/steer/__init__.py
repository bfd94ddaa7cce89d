"""Acting on features inside a running model: interventions at hook points (`FeatureEdits`
with the SAE's error term added back, `AddVector`), applied by the `steering` context manager
in any forward pass or generation; feature effects (direct logits, ablation, attribution); and
`steer_prompt`, what `saescope steer` prints."""

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

__all__ = [
    "MODES",
    "Ablation",
    "AddVector",
    "Attribution",
    "Edit",
    "FeatureEdits",
    "Intervention",
    "LogitEffect",
    "ablate",
    "attribute",
    "decoder_direction",
    "direct_logits",
    "logit_effects",
    "steer_prompt",
    "steering",
    "true_ablation",
]
