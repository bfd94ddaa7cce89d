"""Errors a user can fix. The CLI prints them as one line, without a traceback."""

import difflib
from collections.abc import Collection, Mapping
from typing import Any


class SaescopeError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(SaescopeError, ValueError):
    """A configuration value is invalid."""


class InputError(SaescopeError, ValueError):
    """Input data has the wrong shape, type or values."""


class FormatError(SaescopeError, ValueError):
    """A saved file is missing, corrupt, or from an unsupported format version."""


def check_keys(given: Mapping[str, Any], known: Collection[str], what: str) -> None:
    """Raise a ConfigError naming the first key of `given` that is not `known` (with the
    closest known one, if any): a misspelt setting never passes silently."""
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown key {key!r} for {what}; {hint}known: {', '.join(known)}")
