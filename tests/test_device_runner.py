"""The device-side runner (no torch), harness statistics, tegrastats parsing, and report rendering/compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgekd.benchmark.advice import recommendations
from edgekd.benchmark.charts import latency_png
from edgekd.benchmark.report import compare
from edgekd.benchmark.stats import latency_stats
from edgekd.benchmark.tegrastats import parse_line, summarize
from edgekd.rundir import RunDir

from conftest import REPO

ORIN = ("RAM 2448/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@1510,1%@1510,off,off] EMC_FREQ 0% GR3D_FREQ 45% "
        "cpu@48.25C soc2@47.5C gpu@47.5C tj@48.25C VDD_IN 4412mW/4400mW VDD_CPU_GPU_CV 483mW/483mW VDD_SOC 1449mW/1449mW")
XAVIER = ("RAM 1822/7765MB (lfb 1134x4MB) SWAP 0/3882MB (cached 0MB) CPU [3%@1190,1%@1190,0%@1190,0%@1190,off,off] "
          "EMC_FREQ 0% GR3D_FREQ 12%@[305] AO@38C GPU@38.5C PMIC@100C CPU@38.5C thermal@38.4C VDD_IN 3788/3788 "
          "VDD_CPU_GPU_CV 461/461 VDD_SOC 1152/1152")


def test_tegrastats_lines_parse() -> None:
    a = parse_line(ORIN)
    assert a["ram_used_mb"] == 2448 and a["ram_total_mb"] == 7620 and a["gpu_load"] == 45
    assert a["cpu"][0] == {"load": 2, "mhz": 1510} and a["cpu"][2] is None
    assert a["temps_c"]["tj"] == 48.25 and a["power_mw"]["VDD_IN"] == 4412 and a["power_avg_mw"]["VDD_IN"] == 4400
    b = parse_line(XAVIER)  # older format: no mW units, GPU clock in brackets
    assert b["power_mw"] == {"VDD_IN": 3788, "VDD_CPU_GPU_CV": 461, "VDD_SOC": 1152}
    assert b["gpu_load"] == 12 and b["gpu_mhz"] == 305 and b["temps_c"]["pmic"] == 100.0


def test_energy_per_inference_from_power() -> None:
    s = summarize([parse_line(ORIN), parse_line(XAVIER)], seconds=2.0, inferences=1000)
    assert s["power_in_mw_mean"] == pytest.approx((4412 + 3788) / 2)
    # 4100 mW × 2 s / 1000 inferences = 8.2 mJ
    assert s["energy_per_inference_mj"] == pytest.approx(8.2)
    assert s["peak_temps_c"]["cpu"] == 48.25


def test_percentiles_on_a_known_sample() -> None:
    t = np.arange(1, 101, dtype=float) / 1000.0  # 1..100 ms
    t[-1] = 1.0  # one 1000 ms outlier
    s = latency_stats(t, batch=4)
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p95_ms"] == pytest.approx(95.05)
    assert s["p99_ms"] == pytest.approx(np.percentile(t * 1e3, 99))
    assert s["outliers"] == 1 and s["runs"] == 100 and s["min_ms"] == 1.0
    assert s["throughput_per_s"] == pytest.approx(4 * 1000 / 50.5)
    assert s["cov"] == pytest.approx(np.std(t) / np.mean(t))


def _tiny_onnx(path: Path) -> Path:
    w = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 4, 4])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_device_runner_never_imports_torch(tmp_path: Path) -> None:
    """`edgekd bench ARTIFACT --profile --data` where importing torch fails: a stub torch package first on the path
    records any import attempt and raises, as on a device without torch."""
    stub = tmp_path / "stub" / "torch"
    stub.mkdir(parents=True)
    marker = tmp_path / "torch-was-imported"
    (stub / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    model = _tiny_onnx(tmp_path / "m.onnx")
    x = np.random.default_rng(1).standard_normal((64, 1, 4, 4)).astype(np.float32)
    w = numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0])
    y = (x.reshape(64, 16) @ w).argmax(1)
    np.savez(tmp_path / "samples.npz", x=x, y=y)
    prof = tmp_path / "quick.yaml"
    raw = yaml.safe_load((REPO / "targets" / "x86-cpu.yaml").read_text())
    raw.update(name="quick", aliases=[], measure={"warmup": 5, "warmup_seconds": 0.05, "iterations": 50, "max_seconds": 2,
                                                   "batch_sizes": [1, 8]})
    prof.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "stub"), str(REPO)]), EDGEKD_QUIET="1")
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "bench", str(model), "--profile", str(prof), "--data",
                           str(tmp_path / "samples.npz"), "--out", str(tmp_path / "res")], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not marker.exists(), "the device-side runner tried to import torch"
    res = json.loads((tmp_path / "res" / "result.json").read_text())
    assert res["accuracy"]["top1"] == 1.0  # the runtime computes exactly the graph's argmax
    assert res["torch_imported"] is False and res["backend"] == "onnxruntime"
    l1 = res["latency"]["1"]
    assert 0 < l1["p50_ms"] <= l1["p90_ms"] <= l1["p95_ms"] <= l1["p99_ms"] and l1["runs"] >= 50
    assert "8" in res["latency"] and res["latency"]["8"]["batch"] == 8
    assert (tmp_path / "res" / "latency.png").stat().st_size > 1000 and "| top-1 |" in proc.stdout
    # a host command in that environment fails with one line naming the extra to install
    bad = subprocess.run([sys.executable, "-m", "edgekd.cli", "synth", str(model), "--out", str(tmp_path / "s.npz")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "edgekd[full]" in bad.stderr and "Traceback" not in bad.stderr


def test_bench_artifact_without_profile_is_a_usage_error(tmp_path: Path) -> None:
    model = _tiny_onnx(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "bench", str(model)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 2 and "--profile" in proc.stderr and "Traceback" not in proc.stderr


def _fake_run(root: Path, cpu: str, p50: float, top1: float) -> RunDir:
    """A run directory written the way the bench stage writes one (real files, hand-picked numbers)."""
    run = RunDir(root)
    out = root / "05-bench" / "x86-cpu"
    out.mkdir(parents=True)
    lat = {"target": "x86-cpu", "backend": "onnxruntime", "results": [
        {"role": "student", "precision": "int8", "size_bytes": 2048, "peak_rss_mb": 50.0, "threads": 2,
         "latency": {"1": {**latency_stats(np.full(50, p50 / 1000)), "times_ms": [p50] * 50}}}]}
    acc = {"target": "x86-cpu", "results": [{"role": "student", "precision": "int8", "top1": top1, "samples": 100}]}
    (out / "latency.json").write_text(json.dumps(lat))
    (out / "accuracy.json").write_text(json.dumps(acc))
    run.manifest["environment"] = {"cpu": {"model": cpu}}
    run.manifest["stages"]["bench/x86-cpu"] = {"status": "done", "outputs": {"latency": "05-bench/x86-cpu/latency.json",
                                                                             "accuracy": "05-bench/x86-cpu/accuracy.json"}}
    run.save()
    return run


def test_report_compare_two_runs(tmp_path: Path) -> None:
    a = _fake_run(tmp_path / "a", "cpu A", p50=2.0, top1=0.90)
    b = _fake_run(tmp_path / "b", "cpu B", p50=1.0, top1=0.91)
    c = compare(a, b)
    (row,) = c["rows"]
    assert row["p50_ratio_b_over_a"] == pytest.approx(0.5) and row["top1_delta_points"] == pytest.approx(1.0)
    assert "| x86-cpu | student | int8 | 0.9000 | 0.9100 | +1.00 |" in c["markdown"]
    assert "different machines" in c["markdown"]
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "report", "--compare", str(a.root), str(b.root)],
                          capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0 and "B/A" in proc.stdout
    rep = subprocess.run([sys.executable, "-m", "edgekd.cli", "report", str(a.root)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert rep.returncode == 0, rep.stderr
    assert (a.root / "latency.png").stat().st_size > 1000 and (a.root / "pareto.png").exists()
    assert "| x86-cpu | onnxruntime | student | int8 | 0.9000 |" in (a.root / "report.md").read_text()


def test_latency_plot_needs_timings(tmp_path: Path) -> None:
    assert latency_png([{"target": "t", "model": "m", "precision": "p", "times_ms": None}], tmp_path / "l.png") is False
    assert latency_png([{"target": "t", "model": "m", "precision": "p", "times_ms": [1.0, 1.2, 0.9]}], tmp_path / "l.png")


def test_report_recommends_fp32_when_int8_is_not_faster() -> None:
    row = {"target": "x86-cpu", "model": "student"}
    slow = [{**row, "precision": "fp32", "p50_ms": 0.20}, {**row, "precision": "int8", "p50_ms": 0.34}]
    fast = [{**row, "precision": "fp32", "p50_ms": 0.20}, {**row, "precision": "int8", "p50_ms": 0.08}]
    (rec,) = recommendations(slow)
    assert "x86-cpu" in rec and "0.340 vs 0.200" in rec and "--precision fp32" in rec
    assert recommendations(fast) == []
    assert recommendations([{**row, "precision": "int8", "p50_ms": None}]) == []
