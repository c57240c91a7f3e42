"""Which thread count is fastest for each artifact on this machine (issue #19).

A profile names one thread count, but at batch 1 a small model often runs faster on fewer threads than the cores
offer (measured: a MobileNet-style INT8 student at 0.042 ms with 1 thread, 0.080 ms with the profile's 2, ONNX
Runtime), and the answer differs per artifact. So bench also times every artifact at each candidate count —
1, the powers of two below the logical core count, the core count and the profile's — against each other in
alternating rounds in one worker process (:mod:`edgekd.benchmark.alternating`: one session per artifact and count),
and reports the fastest beside the profile's. The headline numbers stay at the profile's (or ``bench.threads``)
count, the deployment setting; the sweep says when another would be faster.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

#: backends whose CPU sessions take a thread count (the ``threads`` worker setting)
CPU_BACKENDS = ("onnxruntime", "openvino")


def candidate_threads(configured: int | None, cores: int | None = None) -> list[int]:
    """1, powers of two below ``cores``, ``cores`` and the configured count, ascending, at most ``cores``."""
    cores = max(1, cores or os.cpu_count() or 1)
    out = {1, cores}
    t = 2
    while t < cores:
        out.add(t)
        t *= 2
    if configured:
        out.add(min(int(configured), cores))
    return sorted(out)


def sweep(backend: str, artifacts: list[Path], settings: dict[str, Any], counts: list[int], warmup: int,
          iterations: int, rounds: int) -> list[dict[str, Any]]:
    """Per artifact: ``{"p50_ms": {threads: median over rounds}, "p50_rounds_ms": {threads: [per round]},
    "best_threads", "best_p50_ms", "consistent"}``; ``consistent``: the best count was faster than every other count
    in every round (a recommendation needs that, not only a better median)."""
    from edgekd.benchmark.subprocess_worker import run_alternating

    models = [a for a in artifacts for _ in counts]
    per_model = [{"threads": t} for _ in artifacts for t in counts]
    res = run_alternating(backend, models, {**settings, "per_model": per_model}, warmup, iterations, rounds)
    out = []
    for i in range(len(artifacts)):
        per = {str(t): [float(v) for v in res["p50_ms"][i * len(counts) + j]] for j, t in enumerate(counts)}
        p50 = {t: statistics.median(v) for t, v in per.items()}
        best = min(p50, key=lambda k: p50[k])
        consistent = all(b < o for t, v in per.items() if t != best for b, o in zip(per[best], v))
        out.append({"p50_ms": p50, "p50_rounds_ms": per, "best_threads": int(best), "best_p50_ms": p50[best],
                    "consistent": consistent, "rounds": rounds})
    return out
