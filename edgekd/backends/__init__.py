"""Lowering: turn the quantized model into the target runtime's deployable artifact. One registry keyed by backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgekd.registry import Registry
from edgekd.targets import Profile

Lowerer = Callable[[Path, Profile, Path], dict[str, Any]]
BACKENDS: Registry[Lowerer] = Registry("backend")


def lower(backend: str, model: Path, profile: Profile, out_dir: Path) -> dict[str, Any]:
    from edgekd.backends import onnxruntime as _ort  # noqa: F401 - registers
    from edgekd.backends import openvino as _ov  # noqa: F401 - registers

    return BACKENDS.get(backend)(model, profile, out_dir)
