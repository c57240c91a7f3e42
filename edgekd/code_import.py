"""Import a callable the user names: ``pkg.module:fn`` or ``path/to/file.py:fn`` (torch-free).

This runs the user's code, so edgekd calls it only for names given by the person at the keyboard — on the command
line or in their own config (``--arch``, ``--student``, ``--metric``) — never for a name read from a model file or a
run's manifest (see :func:`edgekd.api.config_from_run`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable


def import_callable(spec: str) -> Callable[..., Any]:
    """The object ``fn`` of ``module:fn`` / ``file.py:fn``; raises ImportError, AttributeError or FileNotFoundError."""
    mod_name, _, fn_name = spec.rpartition(":")
    if not mod_name or not fn_name:
        raise ImportError(f"{spec!r} is not module:function or file.py:function")
    if mod_name.endswith(".py"):
        if not Path(mod_name).is_file():
            raise FileNotFoundError(f"no file {mod_name}")
        module_spec = importlib.util.spec_from_file_location(Path(mod_name).stem, mod_name)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(mod_name)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        if "" not in sys.path and "." not in sys.path:  # the user's own package in the current directory
            sys.path.insert(0, "")
        module = importlib.import_module(mod_name)
    return getattr(module, fn_name)
