"""The task interface: everything the stages need to know about what a model's outputs mean.

Stages never branch on the task: they call these methods on ``ctx.task``. The scoring half (:meth:`Task.score`,
:meth:`Task.agreement`, :meth:`Task.parity`) works on numpy arrays and imports no torch, so the benchmark worker and
the device-side runner score any task; the training half (:meth:`Task.probe`, :meth:`Task.build_student`,
:meth:`Task.distill`, :meth:`Task.evaluate`) imports torch when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class Task:
    name: str = ""
    #: the metric that headlines reports and decides gates
    primary: str = ""

    # ------------------------------------------------------------------ the model and its data
    def probe(self, outputs: Any) -> dict[str, Any]:
        """Check a model's outputs on a dummy batch (torch tensors, a tuple or a dict of them) and return what the
        pipeline needs to know about them (e.g. ``num_classes``); one-line ModelLoadError when they do not fit."""
        raise NotImplementedError

    def output_names(self, info: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def load_data(self, spec: str, *, input_shape: tuple[int, ...], info: dict[str, Any], mean: Any, std: Any,
                  val_fraction: float, seed: int, limit: int | None, resize: str = "stretch") -> Any:
        """The user's data as a :class:`edgekd.data.Dataset` (train/val/test), checked against the model."""
        raise NotImplementedError

    def synth_classes(self, info: dict[str, Any]) -> int:
        """How many classes data-free synthesis should cover (it inverts a classifier's decisions)."""
        from edgekd.errors import UsageError

        raise UsageError(f"data-free synthesis needs a classifier; this run's task is {self.name}", "pass real data with --data")

    # ------------------------------------------------------------------ training (torch)
    def build_student(self, spec: str, input_shape: tuple[int, ...], info: dict[str, Any], width: int | None,
                      depth: int | None) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def distill(self, teacher: Any, student: Any, data: Any, cfg: Any, ckpt_dir: Path | None) -> Any:
        """Train ``student`` from ``teacher``; returns :class:`edgekd.kd.trainer.DistResult`."""
        raise NotImplementedError

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """The task's metrics of a torch model on (x, y)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ scoring (numpy only)
    def score(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        """Metrics of ``outputs`` against ``targets``, the primary one under :attr:`primary`."""
        raise NotImplementedError

    def agreement(self, reference: np.ndarray, outputs: np.ndarray) -> float:
        """How closely ``outputs`` reproduce ``reference`` (a student's outputs vs its teacher's), in [0, 1]."""
        raise NotImplementedError

    def parity(self, reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
        """Two implementations of one model compared (max/mean |Δ| and the task's agreement), for the parity gates."""
        raise NotImplementedError

    def calibration(self, data: Any, recipe: Any, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The calibration samples (x, targets) for a recipe."""
        raise NotImplementedError

    def describe_calibration(self, targets: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        """What the calibration set covers, for the report."""
        return {}
