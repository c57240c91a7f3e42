"""Time several artifacts of one backend against each other in one process: every session opened once, then
``rounds`` rounds in alternating order (A B C, C B A, …), each artifact warmed up again before its timed calls
(``warmup_seconds`` in the first round, ``rewarm_seconds``, default 0.2 s, in later ones).
Imports no torch. Prints one JSON object: ``{"p50_ms": [[round p50 per artifact] ...], "load_seconds": [...]}``.

    python -m edgekd.benchmark.alternating --backend onnxruntime --models '["a.onnx", "b.onnx"]' --settings '{...}'

Why one process (the precision planner's timer; bench keeps a fresh process per artifact and round, for peak
memory): a fresh interpreter per artifact and round costs the runtime's import and session set-up each time, which
was most of the planner's timing wall time, and alternating inside one process still spreads the machine's drift
over every artifact alike (the brief's rule: alternating rounds in one run, same thread count, medians).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def time_alternating(backend: str, models: list[Path], settings: dict, warmup: int, iterations: int,
                     rounds: int) -> dict:
    """Per artifact, the batch-1 p50 (ms) of each round, and its session's load time."""
    from edgekd.benchmark.worker import _timed_loop
    from edgekd.runtimes import open_session

    shape = tuple(settings["input_shape"])
    x = np.random.default_rng(0).standard_normal((1, *shape[1:])).astype(np.float32)
    calls, loads = [], []
    per_model = settings.get("per_model") or [{} for _ in models]  # e.g. one thread count per entry (threads.sweep)
    for m, own in zip(models, per_model):
        t0 = time.perf_counter()
        calls.append(open_session(backend, m, {**settings, **own}).timed(x))
        loads.append(time.perf_counter() - t0)
    p50: list[list[float]] = [[] for _ in models]
    order = list(range(len(models)))
    first_warmup = settings.get("warmup_seconds", 1.0)
    rewarm = settings.get("rewarm_seconds", min(0.2, first_warmup))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            # the first round settles each session (thread pool, allocations, clocks) for warmup_seconds; later
            # rounds only refill the caches the other sessions evicted
            times = _timed_loop(calls[i], warmup, iterations, first_warmup if r == 0 else rewarm,
                                max_seconds=settings.get("max_seconds", 30.0), ci_rel=settings.get("ci_rel", 0.01))
            p50[i].append(statistics.median(times) * 1e3)
    return {"backend": backend, "p50_ms": p50, "load_seconds": loads, "rounds": rounds, "iterations": iterations,
            "threads": settings.get("threads"), "warmup_seconds": first_warmup, "rewarm_seconds": rewarm}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--models", required=True, help="JSON list of artifact paths")
    ap.add_argument("--settings", default="{}")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    models = [Path(m) for m in json.loads(a.models)]
    missing = [str(m) for m in models if not m.exists()]
    if missing:
        print(json.dumps({"error": f"artifacts do not exist: {', '.join(missing)}"}))
        return 2
    print(json.dumps(time_alternating(a.backend, models, json.loads(a.settings), a.warmup, a.iterations, a.rounds)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
