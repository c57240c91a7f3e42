"""One exception family for edgekd.

Every error a user can cause is an :class:`EdgekdError` carrying a one-line message and a hint that names the fix.
The CLI catches the family once, prints ``error: <message> (hint: <hint>)`` (at most :data:`MAX_LINE` characters)
and exits with ``exit_code``; ``--debug`` shows the traceback instead. Exit codes:

    0  success
    1  a bug in edgekd (an unexpected exception; the traceback is printed)
    2  bad input or usage: the command line, a config, a model or data file, a run directory that cannot be used
    3  a quality gate failed (parity or INT8 accuracy): the artifacts that passed and the report are kept and written
  130  interrupted (Ctrl-C): finished stages are kept; the same command resumes
"""

from __future__ import annotations

MAX_LINE = 200


class EdgekdError(Exception):
    """Base class. ``hint`` says what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.one_line()

    def one_line(self, limit: int = MAX_LINE - len("error: ")) -> str:
        """``message (hint: hint)`` on one line; a long message is cut so that the hint (the fix) always shows."""
        text = " ".join(self.message.split())
        hint = " ".join(self.hint.split()) if self.hint else ""
        extra = len(" (hint: )") if hint else 0
        if len(text) + len(hint) + extra > limit:
            # the problem keeps up to 60 % of the line, the fix the rest; each is cut with an ellipsis
            text_room = max(limit - extra - len(hint), int(0.6 * (limit - extra)))
            if len(text) > text_room:
                text = text[: text_room - 1] + "…"
            hint_room = limit - extra - len(text)
            if len(hint) > hint_room:
                hint = hint[: max(0, hint_room - 1)] + "…"
        return text + (f" (hint: {hint})" if hint else "")


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


class GateError(StageError):
    """A quality gate failed (parity, INT8 accuracy): not a bug and not bad input. The pipeline keeps what passed,
    writes the report with the failure, and exits with 3."""

    exit_code = 3


class ParityError(GateError):
    """The exported or lowered model disagrees with PyTorch beyond the configured tolerance."""


class Interrupted(BaseException):
    """Ctrl-C, raised by the CLI's SIGINT handler (a BaseException, so ``except Exception`` blocks let it through
    and Typer does not turn it into a silent exit 130)."""
