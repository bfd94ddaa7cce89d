"""The seed's experiments end to end, and the demo."""
