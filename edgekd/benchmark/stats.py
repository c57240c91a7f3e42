"""Latency statistics: percentiles by linear interpolation (numpy's default), mean, CoV, outliers, throughput."""

from __future__ import annotations

import numpy as np


def median_ci(sorted_t: np.ndarray, z: float = 1.96) -> tuple[float, float]:
    """Distribution-free confidence interval of the median from order statistics: with n sorted samples, the ranks
    ``n/2 ∓ z·√n/2`` (the binomial(n, ½) normal approximation; e.g. Conover, *Practical Nonparametric Statistics*,
    §3.2). Timings are skewed and heavy-tailed, so a t-interval on the mean would not describe the p50."""
    n = sorted_t.size
    half = z * np.sqrt(n) / 2.0
    lo = int(max(0, np.floor(n / 2.0 - half)))
    hi = int(min(n - 1, np.ceil(n / 2.0 + half)))
    return float(sorted_t[lo]), float(sorted_t[hi])


def latency_stats(seconds: list[float] | np.ndarray, batch: int = 1) -> dict[str, float]:
    """Summarise per-call wall times (seconds) into milliseconds.

    Outliers are calls above Q3 + 1.5·IQR (Tukey's fence); they are counted, not dropped.
    """
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    if t.size == 0:
        raise ValueError("no timings")
    q1, q3 = np.percentile(t, [25, 75])
    p50 = float(np.percentile(t, 50))
    lo, hi = median_ci(np.sort(t))
    return {
        "runs": int(t.size),
        "batch": batch,
        "p50_ms": p50,
        "p50_ci95_ms": [lo, hi],
        "p90_ms": float(np.percentile(t, 90)),
        "p95_ms": float(np.percentile(t, 95)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "cov": float(t.std() / t.mean()) if t.mean() > 0 else 0.0,
        "outliers": int((t > q3 + 1.5 * (q3 - q1)).sum()),
        "throughput_per_s": float(batch * 1e3 / p50) if p50 > 0 else float("inf"),
    }
