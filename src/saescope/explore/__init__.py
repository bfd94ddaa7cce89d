"""`saescope explore`: a local web app to look at a run's features (a feature browser with a
dashboard per feature, a prompt view, a steering playground, the seed's two demos), fed by
each SAE's feature index (`saescope.analysis`) and the run's model."""

from saescope.explore.app import create_app

__all__ = ["create_app"]
