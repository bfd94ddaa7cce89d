"""Acting on features inside a running model: interventions at hook points (`FeatureEdits`
with the SAE's error term added back, `AddVector`), applied by the `steering` context manager
in any forward pass or generation."""

from saescope.steer.edits import MODES, Edit
from saescope.steer.intervene import (
    AddVector,
    FeatureEdits,
    Intervention,
    decoder_direction,
    steering,
)

__all__ = [
    "MODES",
    "AddVector",
    "Edit",
    "FeatureEdits",
    "Intervention",
    "decoder_direction",
    "steering",
]
