"""Parity between two implementations of a model on real inputs: max/mean abs diff and top-1 agreement."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgekd.errors import ParityError

Runner = Callable[[np.ndarray], np.ndarray]


def run_batched(fn: Runner, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    from edgekd.inference_batch import inference_batch

    batch = batch or inference_batch(x.shape[1:])
    return np.concatenate([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def compare(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    diff = np.abs(ref.astype(np.float64) - out.astype(np.float64))
    return {
        "samples": int(len(ref)),
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        **({"top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()) if len(ref) else 1.0}
           if ref.ndim == 2 else {}),
    }


def check(stats: dict[str, Any], *, what: str, atol: float | None, min_agreement: float) -> None:
    """Raise :class:`ParityError` past tolerance (``atol=None`` checks agreement only, for quantized models). The
    agreement is the task's (``stats["agreement"]``, named by ``agreement_metric``: top-1 agreement for classifiers,
    R² for the outputs task)."""
    agree = stats.get("agreement", stats.get("top1_agreement"))
    label = stats.get("agreement_metric", "top-1 agreement")
    if atol is not None and stats["max_abs_diff"] > atol:
        raise ParityError(f"{what}: max abs diff {stats['max_abs_diff']:.3g} exceeds tolerance {atol:g} "
                          f"({label} {agree:.4f})",
                          "the exporter changed the model's math; check custom ops, or raise export.atol if expected")
    if agree < min_agreement:
        raise ParityError(f"{what}: {label} {agree:.4f} is below {min_agreement:.4f}",
                          "see parity.json; for int8 try a larger calibration recipe (--calibration large)")
