"""Numpy-only metrics for models whose outputs are arbitrary tensors (the ``outputs`` task): fidelity of one
implementation to a reference (a student or a quantized artifact against the teacher's PyTorch outputs) and the
task's own metrics against the data's targets. No torch: the benchmark worker and the device runner use them.

Fidelity, per output, with ``t`` the reference and ``s`` the outputs under test, both (N, d) after flattening:

    R²        = 1 − Σ (s − t)² / Σ (t − t̄)²          t̄ per output dimension over the N samples (the coefficient of
                                                        determination of s as a predictor of t: 1 perfect, 0 no better
                                                        than the reference's mean, < 0 worse)
    cosine    = mean_n  ⟨s_n, t_n⟩ / (‖s_n‖ ‖t_n‖)    per-sample, only for d ≥ 2 (for a scalar it is only the sign)
    rel_l2    = ‖s − t‖ / ‖t‖                         over all elements
    pearson r = corr(vec s, vec t)                    over all elements
    max |Δ|   = max |s − t|

Against targets ``y`` of the same per-sample shape: MAE and RMSE (regression); for binary {0, 1} targets on an output
in [0, 1] (multi-label probabilities) also macro F1 at 0.5 and mAP (mean over labels of the average precision, the
area under the precision-recall curve computed as in scikit-learn's ``average_precision_score``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, np.float64).reshape(len(a), -1)


def r2(reference: np.ndarray, outputs: np.ndarray) -> float:
    t, s = _flat(reference), _flat(outputs)
    ss_res = float(((s - t) ** 2).sum())
    ss_tot = float(((t - t.mean(0, keepdims=True)) ** 2).sum())
    if ss_tot == 0.0:  # a constant reference: only an exact copy fits it
        return 1.0 if ss_res == 0.0 else float("-inf")
    return 1.0 - ss_res / ss_tot


def fidelity(reference: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """How closely ``outputs`` reproduce ``reference`` (one output, (N, …) each)."""
    t, s = _flat(reference), _flat(outputs)
    diff = s - t
    res: dict[str, float] = {"r2": r2(t, s),
                             "rel_l2": float(np.linalg.norm(diff) / max(np.linalg.norm(t), 1e-12)),
                             "max_abs_diff": float(np.abs(diff).max()) if diff.size else 0.0}
    tv, sv = t.ravel(), s.ravel()
    res["pearson_r"] = float(np.corrcoef(tv, sv)[0, 1]) if tv.std() > 0 and sv.std() > 0 else float("nan")
    if t.shape[1] >= 2:
        den = np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)
        res["cosine"] = float(np.mean((t * s).sum(1) / np.maximum(den, 1e-12)))
    return res


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP of one label: Σ_k (R_k − R_{k−1}) P_k over the score-sorted samples (ties broken by order), as
    scikit-learn's ``average_precision_score``; NaN when the label has no positive sample."""
    labels = np.asarray(labels, bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    hits = labels[order]
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def target_metrics(outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """The task's own metrics of one output against targets of the same per-sample size."""
    s, y = _flat(outputs), _flat(targets)
    err = s - y
    res = {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    if binary and s.min() >= 0.0 and s.max() <= 1.0:
        pred = s >= 0.5
        yb = y.astype(bool)
        tp = (pred & yb).sum(0)
        denom = pred.sum(0) + yb.sum(0)
        f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), np.nan)
        res["f1_macro"] = float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")
        aps = [average_precision(s[:, j], yb[:, j]) for j in range(s.shape[1])]
        res["mAP"] = float(np.nanmean(aps)) if np.isfinite(aps).any() else float("nan")
    return res


def split_packed(packed: np.ndarray, layout: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """(N, Σ d_k) → {name: (N, *shape_k)}, the inverse of packing the outputs side by side in ``layout``'s order."""
    out: dict[str, np.ndarray] = {}
    packed = np.asarray(packed).reshape(len(packed), -1)
    start = 0
    for o in layout:
        d = int(np.prod(o["shape"])) if o["shape"] else 1
        out[o["name"]] = packed[:, start : start + d].reshape((len(packed), *o["shape"]))
        start += d
    if start != packed.shape[1]:
        raise ValueError(f"outputs have {packed.shape[1]} values a sample, the layout {start}")
    return out
