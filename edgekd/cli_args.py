"""Command-line values → config keys: the small parsers behind ``edgekd``'s flags (``--target a,b``, ``--mean``,
``--set SECTION.KEY=VALUE``, ``--feature S:T``, ``--input``/``--const``). Each bad value is one
:class:`~edgekd.errors.UsageError` line naming the fix. Also the argv and environment set-up the entry point does
before Typer runs (global flags after the command, third-party warnings)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, List, Optional

import typer

from edgekd.errors import UsageError


def targets_list(values: Optional[List[str]]) -> Optional[list[str]]:
    if not values:
        return None
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def floats(text: Optional[str], flag: str = "--mean/--std") -> Optional[list[float]]:
    if not text:
        return None
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of numbers", f"e.g. {flag.split('/')[0]} 0.286 "
                         "or 0.485,0.456,0.406") from None
    if not all(math.isfinite(v) for v in vals):
        raise UsageError(f"{flag} {text!r} holds a non-finite number", "pass finite numbers on the 0..1 scale")
    return vals


def sets(values: Optional[List[str]]) -> dict[str, Any]:
    """``--set section.key=value`` (repeatable) → ``{"section__key": value}``, the value read as YAML (``0.5``,
    ``true``, ``[a, b]``, ``null``); every config key is reachable, and the config model rejects unknown ones."""
    import yaml

    out: dict[str, Any] = {}
    for v in values or []:
        key, sep, raw = v.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(p.isidentifier() for p in parts):
            raise UsageError(f"--set {v!r} is not SECTION.KEY=VALUE", "e.g. --set quantize.plan.max_drop=0.5 "
                             "(keys as in pipeline.yaml, dots between sections)")
        try:
            out["__".join(parts)] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise UsageError(f"--set {v!r}: the value is not valid YAML", "quote it, e.g. --set data.path='my dir'") from None
    for a in out:
        clash = next((b for b in out if b.startswith(a + "__")), None)
        if clash:
            raise UsageError(f"--set gives both {a.replace('__', '.')} and a key inside it ({clash.replace('__', '.')})",
                             "set the keys inside the section one by one")
    return out


def features(values: Optional[List[str]]) -> Optional[list[dict[str, Any]]]:
    if not values:
        return None
    out = []
    for v in values:
        s, sep, t = v.partition(":")
        if not sep or not s or not t:
            raise typer.BadParameter(f"--feature {v!r}: write STUDENT_PATH:TEACHER_PATH, e.g. layer2:layer2")
        out.append({"student": s, "teacher": t})
    return out


def bindings(inputs: Optional[List[str]], consts: Optional[List[str]]) -> dict[str, Any]:
    """``--input NAME=SHAPE`` / ``--const NAME=VALUE`` → the config's ``inputs`` / ``consts`` (a ``.npy`` path made
    absolute, so that ``edgekd bench RUN`` finds it from any folder)."""
    from edgekd.models.inputs import parse_assignments

    out: dict[str, Any] = {}
    if inputs:
        out["inputs"] = parse_assignments(inputs, "--input")
    if consts:
        out["consts"] = {n: str(Path(v).expanduser().resolve()) if v.endswith(".npy") else v
                         for n, v in parse_assignments(consts, "--const").items()}
    return out


GLOBAL_FLAGS = ("--quiet", "-q", "--debug")


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Move ``--quiet``/``-q``/``--debug`` given after the command (``edgekd compress m.pt2 --quiet``) to the front,
    where the group callback reads them; Click only accepts a group's options before the command name. Tokens after a
    ``--`` separator are left alone."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags = [a for a in argv[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in argv[:end] if a not in GLOBAL_FLAGS] + argv[end:]


def quiet_third_party() -> None:
    """torch, ONNX and NNCF print deprecation warnings and log lines (e.g. "torchvision is not installed") that say
    nothing about the user's run; edgekd's own messages go through :mod:`edgekd.progress`. ``--debug`` keeps them."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|onnx|onnxscript|nncf|openvino)(\.|$)")
    for name in ("onnxscript", "nncf", "openvino"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # torch sets its loggers' levels from TORCH_LOGS when it is imported ("-onnx": errors only); a user's own
    # TORCH_LOGS is left alone
    os.environ.setdefault("TORCH_LOGS", "-onnx")
