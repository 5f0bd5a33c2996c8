"""Errors that reach the user as one line (`error: ...`, exit status 2), importable without Hydra."""


class ConfigError(ValueError):
    """A config value that is well-typed but unusable; reported to the user as one line."""
