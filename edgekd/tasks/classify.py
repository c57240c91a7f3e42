"""Classification: one ``(batch, classes)`` logits output, integer labels; top-1 is the primary metric.

    score      top-1 = mean(argmax z == y)
    agreement  mean(argmax z_student == argmax z_teacher)
    calibration class-balanced (stratified) samples of the recipe's split
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekd.tasks import register
from edgekd.tasks.base import Task


@register
class Classification(Task):
    name = "classify"
    primary = "top1"

    def probe(self, outputs: Any) -> dict[str, Any]:
        from edgekd.errors import ModelLoadError

        out = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        shape = tuple(getattr(out, "shape", ()))
        if len(shape) != 2 or not shape[1]:
            raise ModelLoadError(f"the model's output has shape {shape}, not (batch, classes) logits",
                                 "edgekd compresses classifiers today; wrap the model to return logits")
        return {"num_classes": int(shape[1])}

    def output_names(self, info: dict[str, Any]) -> list[str]:
        return ["logits"]

    def score(self, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        if not len(targets):
            return {"samples": 0, "top1": float("nan")}
        return {"samples": int(len(targets)), "top1": float((outputs.argmax(1) == targets).mean())}

    def agreement(self, reference: np.ndarray, outputs: np.ndarray) -> float:
        return float((reference.argmax(1) == outputs.argmax(1)).mean()) if len(reference) else 1.0

    def calibration(self, data: Any, recipe: Any, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        from edgekd.quant.calibration import select

        return select(data, recipe, count)
