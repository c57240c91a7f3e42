"""Latency statistics and the torch-free benchmark worker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekd.benchmark.stats import latency_stats
from edgekd.exporters.onnx_export import export_onnx
from edgekd.models.zoo import build_model


def test_percentiles_on_a_known_sample() -> None:
    s = latency_stats(np.arange(1, 101) / 1000.0)  # 1..100 ms
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5)
    assert s["outliers"] == 0 and s["runs"] == 100
    assert s["throughput_per_s"] == pytest.approx(1000 / 50.5)
    spiky = latency_stats([0.001] * 99 + [0.1])
    assert spiky["outliers"] == 1 and spiky["p50_ms"] == pytest.approx(1.0)


def test_median_ci_from_order_statistics() -> None:
    from edgekd.benchmark.stats import median_ci

    # n = 100: ranks 50 ∓ 1.96·√100/2 = 40.2 / 59.8 → the 40th and 60th order statistics (0-based)
    assert median_ci(np.arange(100.0)) == (40.0, 60.0)
    assert latency_stats(np.arange(1, 101) / 1000.0)["p50_ci95_ms"] == pytest.approx([41.0, 61.0])


def test_timing_stops_on_a_ci_width_or_a_time_budget_and_bounds_the_warm_up() -> None:
    """A steady call stops at the 50-call floor (its p50 is known to ±1 %); a bimodal one, whose median CI spans both
    modes, runs to its time budget instead; a slow call is warmed up for at most twice warmup_seconds, not 200 calls."""
    import time

    from edgekd.benchmark.worker import _timed_loop

    def spin(seconds: float) -> None:  # a busy wait: steadier than sleep on a loaded machine
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    steady = _timed_loop(lambda: spin(0.002), warmup=2, iterations=2000, warmup_seconds=0.0, max_seconds=30,
                         min_seconds=0.0)
    assert len(steady) == 50
    # ... but not before min_seconds of timing: a fast model is not judged on a 100-ms snapshot
    floor = _timed_loop(lambda: spin(0.002), warmup=2, iterations=2000, warmup_seconds=0.0, min_seconds=0.3)
    # (a count would be a timed assertion: on a shared CPU a 2-ms spin is sometimes preempted to 6 ms)
    assert len(floor) % 25 == 0 and sum(floor) >= 0.27  # stopped by the CI rule, at a check, after ≈ 0.3 s timed
    flip = iter(range(10**6))
    t0 = time.perf_counter()
    noisy = _timed_loop(lambda: time.sleep(0.001 if next(flip) % 2 else 0.004), warmup=2, iterations=2000,
                        warmup_seconds=0.0, max_seconds=0.4)
    assert 50 < len(noisy) < 2000 and time.perf_counter() - t0 < 2.0
    calls = []
    _timed_loop(lambda: (calls.append(1), time.sleep(0.02)), warmup=200, iterations=50, warmup_seconds=0.1,
                ci_rel=None)
    assert len(calls) - 50 <= 12  # ≤ 0.2 s of 20-ms calls (+1), not 200
    assert len(_timed_loop(lambda: None, warmup=0, iterations=300, warmup_seconds=0.0, ci_rel=0.0)) == 300


def test_worker_times_each_batch_and_scores_raw_outputs_with_the_task(tmp_path: Path) -> None:
    """(That the worker imports no torch is tested through the device-side runner, test_device_runner.py.)"""
    export_onnx(build_model("resnet-xs", 1, 10).eval(), (1, 1, 28, 28), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((20, 1, 28, 28)).astype(np.float32)
    y = np.arange(20) % 10
    np.savez(tmp_path / "d.npz", x=x, y=y)
    repo = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-m", "edgekd.benchmark.worker", "--backend", "onnxruntime", "--model", str(tmp_path / "m.onnx"),
                          "--data", str(tmp_path / "d.npz"), "--settings", json.dumps({"threads": 1, "input_shape": [1, 1, 28, 28]}),
                          "--warmup", "2", "--iterations", "15", "--batch-sizes", "1,4", "--logits-out", str(tmp_path / "o.npy"),
                          "--task", "classify"], capture_output=True, text=True, cwd=repo)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["latency"]) == {"1", "4"} and out["latency"]["1"]["runs"] == 15
    outputs = np.load(tmp_path / "o.npy")
    assert outputs.shape == (20, 10)
    assert out["accuracy"] == {"samples": 20, "top1": float((outputs.argmax(1) == y).mean())}  # the task's score
    assert out["peak_rss_mb"] > 10


def test_rounds_combine_into_one_result() -> None:
    """Batch-1 statistics over every call of every round; other batches as the median of the rounds' p50."""
    from edgekd.stages.bench import combine_rounds

    def worker(times_ms: list[float], p50_8: float, rss: float) -> dict:
        lat1 = {**latency_stats(np.asarray(times_ms) / 1e3), "times_ms": times_ms}
        return {"backend": "onnxruntime", "size_bytes": 1, "peak_rss_mb": rss, "accuracy": {"top1": 0.5, "samples": 4},
                "latency": {"1": lat1, "8": {"p50_ms": p50_8, "throughput_per_s": 8e3 / p50_8}}}

    rounds = [worker([1.0, 2.0, 3.0], 10.0, 100), worker([4.0, 5.0, 6.0], 20.0, 120), worker([7.0, 8.0, 9.0], 12.0, 90)]
    r = combine_rounds(rounds, "student", "int8", "a.onnx")
    assert r["per_round_p50_ms"] == [2.0, 5.0, 8.0]
    assert r["latency"]["1"]["p50_ms"] == pytest.approx(5.0) and r["latency"]["1"]["runs"] == 9
    assert r["latency"]["8"]["p50_ms"] == 12.0 and r["latency"]["8"]["throughput_per_s"] == pytest.approx(8e3 / 12)
    assert r["peak_rss_mb"] == 120 and r["accuracy"] == {"top1": 0.5, "samples": 4}


def test_no_distill_times_each_file_once_in_alternating_rounds(tmp_path: Path, demo_teacher: Path, fmnist: Path) -> None:
    """--no-distill: no "student" rows (there is none, and its FP32 export would be the teacher's file timed against
    itself); the speed-up is the median of the per-round ratios of the same run."""
    import edgekd
    from edgekd.fileio import read_json

    run = tmp_path / "run"
    rep = edgekd.compress(demo_teacher, targets=["x86-cpu"], run_dir=str(run), data={"path": "fashion-mnist", "limit": 600,
                          "eval_limit": 300}, distill={"enabled": False}, quantize={"calibration": "small"},
                          bench={"iterations": 30, "warmup": 2, "warmup_seconds": 0.05, "rounds": 3})
    assert sorted((r["model"], r["precision"]) for r in rep["rows"]) == [("teacher", "fp32"), ("teacher", "int8")]
    lat = read_json(run / "05-bench" / "x86-cpu" / "latency.json")["results"]
    fp32, int8 = (next(r for r in lat if r["precision"] == p) for p in ("fp32", "int8"))
    assert len(fp32["per_round_p50_ms"]) == len(int8["per_round_p50_ms"]) == 3
    ratios = sorted(a / b for a, b in zip(fp32["per_round_p50_ms"], int8["per_round_p50_ms"]))
    assert int8["speedup_vs_teacher_p50"] == pytest.approx(ratios[1]) and int8["speedup_range"] == pytest.approx([ratios[0], ratios[2]])
    assert fp32["artifact"] != int8["artifact"]


def test_report_shows_batch_n_throughput_from_each_batchs_p50() -> None:
    from edgekd.benchmark.tables import throughput_lines

    rows = [{"target": "x86-cpu", "model": "teacher", "precision": "fp32",
             "throughput_per_s": {"1": 1e3 / 2.0, "8": 8e3 / 12.0}},
            {"target": "x86-cpu", "model": "student", "precision": "int8", "throughput_per_s": {"1": 1e3 / 0.5}}]
    lines = throughput_lines(rows)
    assert "| batch 1 | batch 8 |" in lines[3]
    assert lines[5] == "| x86-cpu | teacher | fp32 | 500 | 667 |"  # 8 × 1000 / 12 ms
    assert lines[6] == "| x86-cpu | student | int8 | 2,000 | – |"  # not measured at batch 8
    assert throughput_lines([rows[1]]) == []  # batch 1 only: the latency table already says it
