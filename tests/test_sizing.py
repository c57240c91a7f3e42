"""``--student auto`` (issue #19): the student is chosen by timing the zoo's candidates against the teacher on the
target, real ONNX Runtime sessions, before training."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

import edgekd
from helpers import FAST_BENCH
from edgekd.benchmark.threads import candidate_threads
from edgekd.models.sizing import CANDIDATES, stem_scale
from edgekd.models.zoo import build_model


def test_the_zoo_scales_its_stem_to_large_inputs() -> None:
    assert [stem_scale((1, 3, s, s)) for s in (28, 32, 64, 112, 224)] == [1, 1, 2, 4, 8]
    m = build_model("resnet-s", 3, 10, stem_stride=2 * stem_scale((1, 3, 224, 224))).eval()
    with torch.no_grad():
        stem = m.stem(torch.zeros(1, 3, 224, 224))
        assert stem.shape[-1] == 14 and m(torch.zeros(2, 3, 224, 224)).shape == (2, 10)
    # presets at their own input keep their 3×3 stem (the committed students are unchanged)
    assert build_model("resnet-s", 1, 10).stem[0].kernel_size == (3, 3)


def test_student_auto_picks_the_largest_candidate_fast_enough(demo_teacher: Path, fmnist: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    rep = edgekd.compress(demo_teacher, targets=["x86-cpu-vnni"], run_dir=str(run),
                          data={"path": "fashion-mnist", "limit": 1200, "eval_limit": 300},
                          distill={"student": "auto", "epochs": 1, "batch_size": 128},
                          bench={"iterations": 20, "warmup": 2, "warmup_seconds": 0.05, "rounds": 1})
    choice = json.loads((run / "01-distill" / "student_choice.json").read_text())
    rows = {r["name"]: r for r in choice["candidates"]}
    assert set(rows) == set(CANDIDATES) and choice["precisions_timed"] == ["fp32", "int8"] and choice["seconds"] > 0
    assert all(r["fp32_p50_ms"] > 0 and r["int8_p50_ms"] > 0 for r in rows.values())
    for r in rows.values():  # the expected speed-up is the teacher's FP32 p50 over the candidate's best
        assert abs(r["speedup"] - choice["teacher_p50_ms"] / min(r["fp32_p50_ms"], r["int8_p50_ms"])) < 1e-6
    ok = [r for r in rows.values() if r["meets_goal"]]
    pick = rows[choice["student"]]
    if ok:
        assert pick["params"] == max(r["params"] for r in ok) and pick["speedup"] >= choice["speed_goal"]
    else:
        assert pick["speedup"] == max(r["speedup"] for r in rows.values())
    # the student trained is the one chosen, and the report says why
    meta = torch.load(run / "01-distill" / "student.pt", weights_only=True)["edgekd"]
    assert meta["arch"] == choice["student"]
    assert "--student auto" in (run / "report.md").read_text()
    assert rep is not None
    # a re-bench names no code (auto is a zoo choice), and every artifact is also timed at each thread count
    edgekd.bench(str(run))
    rows = json.loads((run / "report.json").read_text())["rows"]
    if (os.cpu_count() or 1) > 1:
        for r in rows:
            sw = r["threads_sweep"]
            assert set(sw["p50_ms"]) == {str(t) for t in candidate_threads(r["threads"])} and "1" in sw["p50_ms"]
            assert sw["best_p50_ms"] == min(sw["p50_ms"].values()) and sw["p50_ms"][str(sw["best_threads"])] == sw["best_p50_ms"]
            best = sw["p50_rounds_ms"][str(sw["best_threads"])]
            assert sw["consistent"] == all(b < o for t, v in sw["p50_rounds_ms"].items() if t != str(sw["best_threads"])
                                           for b, o in zip(best, v))


def test_thread_candidates() -> None:
    assert candidate_threads(2, cores=2) == [1, 2]
    assert candidate_threads(4, cores=16) == [1, 2, 4, 8, 16]
    assert candidate_threads(6, cores=12) == [1, 2, 4, 6, 8, 12]
    assert candidate_threads(None, cores=1) == [1] and candidate_threads(8, cores=2) == [1, 2]


def test_a_student_far_below_the_teacher_is_flagged_not_headlined() -> None:
    """A student losing more than distill.max_drop points is a failed distillation: the report warns and brackets its
    speed-up; one within the budget, a lower-is-better user metric, and unbounded metrics are left alone."""
    from types import SimpleNamespace

    from edgekd.benchmark.advice import student_drops
    from edgekd.benchmark.report import _speedup

    def rows(student: float) -> list[dict]:
        return [{"target": "x86-cpu", "model": "teacher", "precision": "fp32", "metric": 0.93},
                {"target": "x86-cpu", "model": "student", "precision": "fp32", "metric": student},
                {"target": "x86-cpu", "model": "student", "precision": "int8", "metric": 0.10}]

    run = SimpleNamespace(manifest={"config": {"distill": {"max_drop": 3.0}}, "inputs": {"model": {}}})
    assert student_drops(run, rows(0.91)) == {}
    assert abs(student_drops(run, rows(0.10))["x86-cpu"] - 83.0) < 1e-9
    lower = SimpleNamespace(manifest={"config": {"distill": {"max_drop": 3.0}},
                                      "inputs": {"model": {"metric_higher_is_better": False}}})
    assert student_drops(lower, rows(0.10)) == {}
    assert student_drops(run, [{**r, "metric": r["metric"] * 50} for r in rows(0.10)]) == {}
    row = {"model": "student", "precision": "fp32", "speedup_vs_teacher_p50": 6.4, "speedup_range": [6, 7], "rounds": 3}
    assert _speedup(row) == "6.4× (6.0–7.0)" and "not a result" in _speedup(row, flagged=True)


def test_a_faster_thread_count_is_recommended() -> None:
    from edgekd.benchmark.advice import recommendations

    row = {"target": "x86-cpu", "model": "student", "precision": "int8", "p50_ms": 0.080, "threads": 2,
           "threads_sweep": {"p50_ms": {"1": 0.042, "2": 0.080}, "best_threads": 1, "best_p50_ms": 0.042}}
    (rec,) = recommendations([row])
    assert "1.9× faster with 1 thread" in rec and "bench.threads=1" in rec
    close = {**row, "threads_sweep": {"p50_ms": {"1": 0.076, "2": 0.080}, "best_threads": 1, "best_p50_ms": 0.076}}
    assert recommendations([close]) == []  # within 10 %: noise, not advice
    mixed = {**row, "threads_sweep": {**row["threads_sweep"], "consistent": False}}
    assert recommendations([mixed]) == []  # faster in the median but not in every round: not advice either


def test_student_auto_sizes_a_detector_from_the_det_presets(tmp_path: Path) -> None:
    """The committed detector (det-m): the det-* presets are timed against it and the one chosen is trained; the
    choice is the largest expected ≥ speed_goal× faster, or the fastest with a warning."""
    import subprocess
    import sys

    from edgekd.models.detector import DETECTORS

    repo = Path(__file__).resolve().parents[1]
    data = tmp_path / "fmnist-det"
    subprocess.run([sys.executable, str(repo / "examples" / "make_fmnist_detection.py"), "--out", str(data), "--train",
                    "240", "--test", "60"], check=True, capture_output=True)
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "edgekd.cli", "compress", str(repo / "examples" / "fmnist_detector.pt2"),
                        "--data", str(data), "--target", "x86-cpu-vnni", "--student", "auto", "--epochs", "1",
                        "--batch-size", "32", "--run-dir", str(run), "--quiet", *FAST_BENCH], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    choice = json.loads((run / "01-distill" / "student_choice.json").read_text())
    rows = {c["name"]: c for c in choice["candidates"]}
    assert set(rows) == set(DETECTORS.names()) and all(c["stem_stride"] is None for c in rows.values())
    ok = [c for c in rows.values() if c["meets_goal"]]
    pick = rows[choice["student"]]
    assert pick["params"] == max(c["params"] for c in ok) if ok else pick["speedup"] == max(c["speedup"] for c in rows.values())
    meta = torch.load(run / "01-distill" / "student.pt", weights_only=True)["edgekd"]
    assert meta["arch"] == choice["student"]
