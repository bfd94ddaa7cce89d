"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


class SaescopeError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(SaescopeError, ValueError):
    """A configuration value is invalid."""


class InputError(SaescopeError, ValueError):
    """Input data has the wrong shape, type or values."""


class FormatError(SaescopeError, ValueError):
    """A saved file is missing, corrupt, or from an unsupported format version."""
