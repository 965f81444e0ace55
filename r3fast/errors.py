"""The two kinds of failure a user sees: a mistake in what they asked for (`UserError`: one line,
exit 2 from the CLI) and a run that cannot go on (`RunError`: one line, exit 1). Anything else
is a bug and keeps its traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "NonFiniteError", "RunError", "UserError"]


class UserError(ValueError):
    """Bad input: a config value, a missing file, an unknown name, a run directory in the way."""


class ConfigError(UserError):
    """A config value that has the wrong type or lies outside its range."""


class RunError(RuntimeError):
    """The run cannot continue (e.g. it diverged); the message says what was kept and what to try."""


class NonFiniteError(RunError):
    """Loss, gradient norm or weights stopped being finite."""
