"""Opt-in MLflow logging against a local file store: the logged metrics are the report's numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.tracking import flatten, row_metrics


def test_flatten_and_row_metrics() -> None:
    assert flatten({"a": 1, "b": {"c": [1, 2], "d": None}}) == {"a": "1", "b.c": "[1, 2]", "b.d": "None"}
    rows = [{"target": "x86-cpu", "model": "student", "precision": "int8", "metric": 0.9, "metric_name": "top1",
             "p50_ms": 0.1, "speedup_vs_teacher_p50": 6.0, "size_bytes": 1024, "peak_rss_mb": None},
            {"target": "x86-cpu", "model": "teacher", "precision": "int8", "metric": 0.99, "metric_name": "fidelity_r2",
             "p50_ms": None}]
    assert row_metrics(rows) == {"x86-cpu.student.int8.top1": 0.9, "x86-cpu.student.int8.p50_ms": 0.1,
                                 "x86-cpu.student.int8.speedup": 6.0, "x86-cpu.student.int8.size_bytes": 1024.0,
                                 "x86-cpu.teacher.int8.fidelity_r2": 0.99}  # the task's metric under its own name


def test_a_run_logged_to_a_file_store(tmp_path: Path, demo_teacher: Path, fmnist: Path) -> None:
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is the optional 'mlflow' extra (installed by make test)")
    import edgekd

    uri = (tmp_path / "mlruns").as_uri()
    rep = edgekd.compress(demo_teacher, targets=["x86-cpu"], run_dir=str(tmp_path / "run"), distill={"enabled": False},
                          data={"path": "fashion-mnist", "limit": 600, "eval_limit": 200}, quantize={"calibration": "small"},
                          bench={"iterations": 10, "warmup": 1, "warmup_seconds": 0.01, "rounds": 1},
                          tracking={"mlflow": True, "mlflow_uri": uri, "experiment": "edgekd-test"})
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.get_run(rep["mlflow_run_id"])
    int8 = next(r for r in rep["rows"] if r["precision"] == "int8")
    assert run.data.metrics["x86-cpu.teacher.int8.top1"] == pytest.approx(int8["top1"])
    assert run.data.metrics["x86-cpu.teacher.int8.p50_ms"] == pytest.approx(int8["p50_ms"])
    assert run.data.params["distill.enabled"] == "False" and run.data.params["targets"] == "['x86-cpu']"
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.json", "manifest.json"} <= names
