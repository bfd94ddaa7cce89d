"""IndexConfig: bad values are one-line ConfigErrors; only what decides the stored index is
compared on resume."""

import pytest

from saescope.analysis import IndexConfig
from saescope.errors import ConfigError


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("tokens", 0, "--tokens must be at least 1"),
        ("top", 0, "top must be at least 1"),
        ("batch_size", -1, "batch_size must be at least 1"),
        ("before", -1, "before must be at least 0"),
        ("checkpoint_batches", -2, "checkpoint_batches must be at least 0"),
    ],
)
def test_bad_values_are_refused(field, value, message):
    with pytest.raises(ConfigError, match=message):
        IndexConfig(**{field: value})


def test_stored_fields_leave_out_how_often_to_checkpoint():
    a = IndexConfig(checkpoint_seconds=1, checkpoint_batches=3)
    assert a.stored() == IndexConfig().stored()
    assert IndexConfig(batch_size=4).stored() != IndexConfig().stored()
    assert IndexConfig(before=3, after=2).width == 6
