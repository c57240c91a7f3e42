"""One exception family for edgekd.

Every error a user can cause is an :class:`EdgekdError` carrying a one-line message and a hint that names the fix.
The CLI catches the family once, prints ``error: <message> (hint: <hint>)`` and exits with ``exit_code``
(2 for usage errors, 1 for everything else); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations


class EdgekdError(Exception):
    """Base class. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self) -> str:
        text = self.message.strip().replace("\n", " ")
        if self.hint:
            text += f" (hint: {self.hint.strip()})"
        return text


class UsageError(EdgekdError):
    """The command line, config file or arguments are wrong."""

    exit_code = 2


class ConfigError(UsageError):
    """A config file or config object is invalid (unknown key, wrong type)."""


class ModelLoadError(UsageError):
    """The model file is missing, in an unknown format, or refused (pickle without opt-in)."""


class DataError(UsageError):
    """The dataset is missing, empty or malformed."""


class TargetError(UsageError):
    """Unknown device profile, bad profile file, or a backend that is not available."""


class BackendUnavailableError(EdgekdError):
    """The runtime a stage needs is not installed here (e.g. TensorRT on a machine without it)."""

    exit_code = 2


class StageError(EdgekdError):
    """A stage failed for a reason that is not the user's input (e.g. export failed)."""


class ParityError(StageError):
    """The exported or lowered model disagrees with PyTorch beyond the configured tolerance."""
