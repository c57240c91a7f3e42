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


def test_worker_never_imports_torch(tmp_path: Path) -> None:
    export_onnx(build_model("resnet-xs", 1, 10).eval(), (1, 1, 28, 28), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((20, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 10)
    # a sitecustomize that makes "import torch" fail inside the worker
    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "torch.py").write_text("raise ImportError('torch is blocked in this test')\n")
    repo = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{tmp_path / 'block'}:{repo}", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-m", "edgekd.benchmark.worker", "--backend", "onnxruntime", "--model", str(tmp_path / "m.onnx"),
                          "--data", str(tmp_path / "d.npz"), "--settings", json.dumps({"threads": 1, "input_shape": [1, 1, 28, 28]}),
                          "--warmup", "2", "--iterations", "15", "--batch-sizes", "1,4"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["torch_imported"] is False and out["accuracy"]["samples"] == 20
    assert set(out["latency"]) == {"1", "4"} and out["latency"]["1"]["runs"] == 15
    assert out["peak_rss_mb"] > 10
