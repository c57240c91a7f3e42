"""Benchmark one artifact in a fresh process: latency, peak memory, size, accuracy. Imports no torch.

    python -m edgekd.benchmark.worker --backend onnxruntime --model m.onnx --data eval.npz --settings '{"threads": 2}'

Running each artifact in its own process makes peak RSS (``ru_maxrss``) belong to that artifact alone and keeps
runtimes from sharing thread pools. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    """Peak resident memory of this process in MB.

    Linux: VmHWM from /proc/self/status, which starts afresh at exec. (``ru_maxrss`` survives execve, so a worker
    started by a big parent would report the parent's peak.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / (1024.0 * 1024.0)


def artifact_size(path: Path) -> int:
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").exists():
        size += path.with_suffix(".bin").stat().st_size
    return size


def _timed_loop(call, warmup: int, iterations: int, warmup_seconds: float = 1.0, min_runs: int = 50,  # noqa: ANN001
                max_seconds: float = 30.0, ci_rel: float | None = 0.01, min_seconds: float = 1.0) -> list[float]:
    """Warm up, then time calls until the p50 is known well enough or the time budget is spent.

    Warm-up: at least ``warmup_seconds`` (caches, clocks and the runtime's thread pool settle: the first few hundred
    calls of a sub-millisecond model run measurably slower), then on to ``warmup`` calls for at most another
    ``warmup_seconds`` — so a 30-ms model is not warmed up for 200 calls (6 s) whatever the budget.
    Timing stops at the first of: ``iterations`` calls; the 95 % confidence interval of the median
    (:func:`edgekd.benchmark.stats.median_ci`) narrower than ±``ci_rel`` of it, checked every 25 calls once
    ``min_seconds`` have been timed; or ``max_seconds`` spent — never before ``min_runs`` calls (or ``iterations``,
    if fewer). A stop rule on a time budget and a CI width gives a slow model the same statistical quality in far
    fewer calls than a fixed count; the ``min_seconds`` floor keeps a fast model from stopping on a 20-ms snapshot
    (100 calls of 0.2 ms agree with each other well before they describe the machine's state)."""
    from edgekd.benchmark.stats import median_ci

    pc = time.perf_counter
    t0 = pc()
    n = 0
    while n < 1 or pc() - t0 < warmup_seconds or (n < warmup and pc() - t0 < 2 * warmup_seconds):
        call()
        n += 1
    times: list[float] = []
    floor = min(min_runs, iterations)
    t_start = pc()
    t_stop = t_start + max_seconds
    for i in range(iterations):
        t0 = pc()
        call()
        t1 = pc()
        times.append(t1 - t0)
        done = i + 1
        if done < floor:
            continue
        if t1 > t_stop:
            break
        if ci_rel and done % 25 == 0 and t1 - t_start >= min_seconds:
            srt = np.sort(times)
            lo, hi = median_ci(srt)
            if (hi - lo) / 2.0 <= ci_rel * float(np.median(srt)):
                break
    return times


def bench(backend: str, model: Path, data: Path | None, settings: dict, warmup: int, iterations: int,
          batch_sizes: list[int], preds_out: Path | None, task: str = "classify", metric: str | None = None) -> dict:
    """Time the artifact and, with data, score its raw outputs with the task's own metrics (numpy only) and, when
    given, the user's metric (``module:fn`` / ``file.py:fn``, named by the person who runs this)."""
    from edgekd.benchmark.stats import latency_stats
    from edgekd.benchmark.tegrastats import TegrastatsSampler, summarize
    from edgekd.runtimes import open_session

    rss0 = _rss_mb()
    x_eval = y_eval = None
    task_info: dict = {}
    if data is not None:
        with np.load(data, allow_pickle=False) as z:
            x_eval, y_eval = z["x"], z["y"]
            if "task_info" in z.files:  # the output layout, for tasks that score several outputs
                task_info = json.loads(str(z["task_info"]))
    shape = tuple(settings["input_shape"])
    threads = settings.get("threads")
    t_load = time.perf_counter()
    session = open_session(backend, model, settings)  # the same runner code the pipeline uses
    make_call, infer = session.timed, session.infer
    load_s = time.perf_counter() - t_load

    latency = {}
    rng = np.random.default_rng(0)
    for b in batch_sizes:
        if x_eval is not None and len(x_eval) >= b:
            x = np.ascontiguousarray(x_eval[:b])
        else:
            x = rng.standard_normal((b, *shape[1:])).astype(np.float32)
        with TegrastatsSampler() as tele:  # Jetson power/thermal telemetry; a no-op elsewhere
            times = _timed_loop(make_call(x), warmup, iterations, settings.get("warmup_seconds", 1.0),
                                max_seconds=settings.get("max_seconds", 30.0), ci_rel=settings.get("ci_rel", 0.01))
        latency[str(b)] = latency_stats(times, batch=b)
        if b == 1:  # the raw distribution, for the report's latency plot (at most 2000 values)
            latency[str(b)]["times_ms"] = [round(t * 1e3, 5) for t in times[:2000]]
        if tele.available:
            # the sampler also covers the warm-up; energy uses the mean power over the whole window and the timed
            # calls' share of it
            latency[str(b)]["tegrastats"] = summarize(tele.samples, sum(times), len(times) * b)

    result: dict = {"backend": backend, "model": str(model), "size_bytes": artifact_size(model), "load_seconds": load_s,
                    "latency": latency, "threads": threads, "warmup": warmup, "iterations": iterations}
    if x_eval is not None:
        from edgekd.tasks import get_task
        from edgekd.tasks.user_metric import with_metric

        from edgekd.inference_batch import inference_batch

        step = inference_batch(x_eval.shape[1:])
        outputs = np.concatenate([infer(np.ascontiguousarray(x_eval[i : i + step])) for i in range(0, len(x_eval), step)])
        result["accuracy"] = with_metric(get_task(task), metric).score(outputs, y_eval, task_info)
        result["task"] = task
        if preds_out is not None:
            np.save(preds_out, outputs.astype(np.float32))
    result["peak_rss_mb"] = _rss_mb()
    result["peak_rss_over_baseline_mb"] = _rss_mb() - rss0
    result["torch_imported"] = "torch" in sys.modules
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", type=Path)
    ap.add_argument("--settings", default="{}")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--batch-sizes", default="1")
    ap.add_argument("--logits-out", type=Path)
    ap.add_argument("--task", default="classify", help="how outputs are scored (edgekd.tasks)")
    ap.add_argument("--metric", help="a user metric, file.py:fn or module:fn (edgekd.tasks.user_metric); runs that code")
    a = ap.parse_args(argv)
    if not a.model.exists():
        print(json.dumps({"error": f"model {a.model} does not exist"}))
        return 2
    res = bench(a.backend, a.model, a.data, json.loads(a.settings), a.warmup, a.iterations,
                [int(b) for b in a.batch_sizes.split(",")], a.logits_out, a.task, a.metric)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
