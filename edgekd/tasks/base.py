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
    #: what :meth:`agreement` measures, for reports and gate messages
    agreement_name: str = "agreement"
    #: the primary metric's direction, and points per unit (budgets such as ``--max-drop`` are in points)
    higher_is_better: bool = True
    points_scale: float = 100.0
    #: whether quantization-aware training (``--qat``: losses on logits, block outputs and attention) fits the task
    trains_qat: bool = False

    def qat_objective(self, info: dict[str, Any]) -> dict[str, Any]:
        """What QAT trains and selects on beyond a classifier's logit KD and top-1: ``task_loss`` and ``val_metric``
        for :func:`edgekd.quant.qat_train.train_qat` (none: the classifier's)."""
        return {}

    @property
    def base(self) -> "Task":
        """The task itself, without a user metric (:mod:`edgekd.tasks.user_metric`)."""
        return self

    # ------------------------------------------------------------------ the model and its data
    def probe(self, outputs: Any) -> dict[str, Any]:
        """Check a model's outputs on a dummy batch (torch tensors, a tuple or a dict of them) and return what the
        pipeline needs to know about them (e.g. ``num_classes``); one-line ModelLoadError when they do not fit."""
        raise NotImplementedError

    def output_names(self, info: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def load_data(self, spec: str, *, input_shape: tuple[int, ...], info: dict[str, Any], mean: Any, std: Any,
                  val_fraction: float, seed: int, limit: int | None, resize: str = "stretch",
                  test_limit: int | None = None) -> Any:
        """The user's data as a :class:`edgekd.data.Dataset` (train/val/test), checked against the model."""
        raise NotImplementedError

    def prepare(self, teacher: Any, data: Any, info: dict[str, Any]) -> None:
        """After the data load (before the run directory is touched): anything the task derives from the teacher
        and the data together (the ``outputs`` task stores the teacher's reference outputs). Default: nothing."""

    def synth_classes(self, info: dict[str, Any]) -> int:
        """How many classes data-free synthesis should cover (it inverts a classifier's decisions)."""
        from edgekd.errors import UsageError

        raise UsageError(f"data-free synthesis needs a classifier; this run's task is {self.name}", "pass real data with --data")

    # ------------------------------------------------------------------ training (torch)
    def build_student(self, spec: str, input_shape: tuple[int, ...], info: dict[str, Any], width: int | None,
                      depth: int | None, stem_stride: int | None = None) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def predict(self, model: Any, x: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray:
        """A torch model's outputs on ``x`` as one array (several outputs packed side by side, in layout order)."""
        raise NotImplementedError

    def distill(self, teacher: Any, student: Any, data: Any, cfg: Any, ckpt_dir: Path | None,
                info: dict[str, Any]) -> Any:
        """Train ``student`` from ``teacher``; returns :class:`edgekd.kd.trainer.DistResult`."""
        raise NotImplementedError

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, float]:
        """The task's metrics of a torch model on (x, y)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ scoring (numpy only)
    def score(self, outputs: np.ndarray, targets: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, Any]:
        """Metrics of ``outputs`` against ``targets``, the primary one under :attr:`primary`."""
        raise NotImplementedError

    def named_outputs(self, outputs: np.ndarray, targets: np.ndarray,
                      info: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """What a user metric (:mod:`edgekd.tasks.user_metric`) gets: the outputs by exported name, and the data's
        own targets. Default: one output."""
        return {self.output_names(info or {})[0]: outputs}, targets

    def agreement(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None) -> float:
        """How closely ``outputs`` reproduce ``reference`` (a student's outputs vs its teacher's); 1 is exact."""
        raise NotImplementedError

    def parity(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None,
               targets: np.ndarray | None = None) -> dict[str, Any]:
        """Two implementations of one model compared, for the parity gates: ``max_abs_diff``, ``mean_abs_diff`` and
        ``agreement`` (the task's, named by ``agreement_metric``). ``targets`` (the data's, when the caller has them)
        let a task gate on its own metric."""
        raise NotImplementedError

    def int8_gate(self, quantize_cfg: Any) -> float:
        """The least :meth:`parity` ``agreement`` an INT8 model may have with its FP32 export."""
        return float(quantize_cfg.min_top1_agreement)

    def calibration(self, data: Any, recipe: Any, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The calibration samples (x, targets) for a recipe."""
        raise NotImplementedError

    def describe_calibration(self, targets: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        """What the calibration set covers, for the report."""
        return {}
