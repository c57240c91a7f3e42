"""The task interface. Everything here but :meth:`Task.probe` works on numpy arrays and imports no torch."""

from __future__ import annotations

from typing import Any

import numpy as np


class Task:
    name: str = ""
    #: the metric that headlines reports and decides gates
    primary: str = ""

    def probe(self, outputs: Any) -> dict[str, Any]:
        """Check a model's outputs on a dummy batch (torch tensors, a tuple or a dict of them) and return what the
        pipeline needs to know about them (e.g. ``num_classes``); one-line ModelLoadError when they do not fit."""
        raise NotImplementedError

    def output_names(self, info: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def score(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Metrics of ``outputs`` against ``targets``, the primary one under :attr:`primary`."""
        raise NotImplementedError

    def agreement(self, reference: np.ndarray, outputs: np.ndarray) -> float:
        """How closely ``outputs`` reproduce ``reference`` (a student's outputs vs its teacher's), in [0, 1]."""
        raise NotImplementedError

    def calibration(self, data: Any, recipe: Any, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The calibration samples (x, targets) for a recipe."""
        raise NotImplementedError
