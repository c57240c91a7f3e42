"""Latency statistics: percentiles by linear interpolation (numpy's default), mean, CoV, outliers, throughput."""

from __future__ import annotations

import numpy as np


def latency_stats(seconds: list[float] | np.ndarray, batch: int = 1) -> dict[str, float]:
    """Summarise per-call wall times (seconds) into milliseconds.

    Outliers are calls above Q3 + 1.5·IQR (Tukey's fence); they are counted, not dropped.
    """
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings")
    q1, q3 = np.percentile(t, [25, 75])
    p50 = float(np.percentile(t, 50))
    return {
        "runs": int(t.size),
        "batch": batch,
        "p50_ms": p50,
        "p90_ms": float(np.percentile(t, 90)),
        "p95_ms": float(np.percentile(t, 95)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "cov": float(t.std() / t.mean()) if t.mean() > 0 else 0.0,
        "outliers": int((t > q3 + 1.5 * (q3 - q1)).sum()),
        "throughput_per_s": float(batch * 1e3 / p50) if p50 > 0 else float("inf"),
    }
