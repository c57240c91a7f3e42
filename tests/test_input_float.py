"""Input layers kept in float where the target runs them faster so (edgekd/quant/input_float.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekd.backends import get_backend
from edgekd.benchmark.alternating import time_alternating
from edgekd.exporters.onnx_export import export_onnx
from edgekd.quant.input_float import choose_input_layers_float, input_layers
from edgekd.quant.ptq import ort_quantize
from edgekd.targets import resolve
from helpers import FAST_BENCH


def grey_cnn() -> nn.Module:
    """A grayscale 96×96 CNN: a 1-channel stem (the layer ONNX Runtime's QLinearConv is slow on), then a body."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 12, 3, 2, 1), nn.ReLU(), nn.Conv2d(12, 24, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(24, 24, 3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(24, 10)).eval()


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    d = tmp_path_factory.mktemp("inputfloat")
    fp32, int8 = d / "fp32.onnx", d / "int8.onnx"
    export_onnx(grey_cnn(), (1, 1, 96, 96), fp32, 17, "legacy")
    x = np.random.default_rng(0).normal(0, 1, (32, 1, 96, 96)).astype(np.float32)
    ort_quantize(fp32, int8, x, resolve("x86-cpu-vnni").onnxruntime)
    return fp32, int8, x


def stem_reads(model: Path, layer: str = "/0/Conv") -> str:
    """The op that produces a convolution's data input in ``model`` (default: the stem)."""
    g = onnx.load(str(model)).graph
    producer = {o: n for n in g.node for o in n.output}
    stem = next(n for n in g.node if n.op_type == "Conv" and n.name == layer)
    src = producer.get(stem.input[0])
    return "graph input" if src is None else src.op_type


def test_only_layers_reading_a_graph_input_are_candidates(quantized) -> None:  # noqa: ANN001
    fp32, _, _ = quantized
    layers = [r["name"] for r in get_backend("onnxruntime").plan_layers(fp32, resolve("x86-cpu-vnni"))]
    assert layers == ["/0/Conv", "/2/Conv", "/4/Conv"]  # the Linear writes the output: float already
    assert input_layers(fp32, layers) == ["/0/Conv"]


@pytest.mark.parametrize("variant_ms, ships", [(0.5, True), (0.99, False)])
def test_the_variant_ships_only_when_timed_faster_by_the_margin(quantized, tmp_path: Path, variant_ms: float,
                                                                 ships: bool) -> None:  # noqa: ANN001
    """Golden decisions: 2× faster ships the stem in float (the shipped graph's stem reads the float input, no
    DequantizeLinear before it); 1.01× faster (under 1.05×) keeps the all-INT8 file byte for byte. The kernel
    profile is real (margin 0: every input layer it times is proposed); the timer here gives fixed rounds."""
    fp32, int8_src, x = quantized
    int8 = tmp_path / "int8.onnx"
    int8.write_bytes(int8_src.read_bytes())
    assert stem_reads(int8) == "DequantizeLinear"
    rec = choose_input_layers_float(get_backend("onnxruntime"), resolve("x86-cpu-vnni"), fp32, int8, x[:1],
                                    tmp_path / "work", lambda models: [[1.0] * 5, [variant_ms] * 5], margin=0.0)
    assert rec["proposed"] == ["/0/Conv"] and rec["slower_in_int8"][0]["int8_us"] > 0
    assert rec["kept_float"] == (["/0/Conv"] if ships else [])
    assert rec["speedup"] == pytest.approx(1.0 / variant_ms, rel=1e-3)
    if ships:
        assert stem_reads(int8) == "graph input"
        assert stem_reads(int8, "/2/Conv") == stem_reads(int8, "/4/Conv") == "DequantizeLinear"  # the body: INT8
    else:
        assert int8.read_bytes() == int8_src.read_bytes()
    assert not (tmp_path / "work").exists()


def test_a_real_timing_decides_and_the_record_says_why(quantized, tmp_path: Path) -> None:  # noqa: ANN001
    """With ONNX Runtime's own timer (alternating rounds, one process): whatever it decides is what its rounds say,
    and what ships is what the record says."""
    fp32, int8_src, x = quantized
    int8 = tmp_path / "int8.onnx"
    int8.write_bytes(int8_src.read_bytes())

    def timer(models: list[Path]) -> list[list[float]]:
        return time_alternating("onnxruntime", models, {"threads": 1, "input_shape": [1, 1, 96, 96],
                                                       "warmup_seconds": 0.1}, 10, 100, 3)["p50_ms"]

    rec = choose_input_layers_float(get_backend("onnxruntime"), resolve("x86-cpu-vnni"), fp32, int8, x[:1],
                                    tmp_path / "work", timer, margin=0.0)
    med = {k: float(np.median(v)) for k, v in rec["p50_rounds_ms"].items()}
    faster = med["int8"] >= 1.05 * med["input layers in float"]
    assert rec["kept_float"] == (["/0/Conv"] if faster else []) and str(round(rec["speedup"], 2)) in rec["reason"]
    assert stem_reads(int8) == ("graph input" if faster else "DequantizeLinear")


def test_the_pipeline_records_the_choice_and_never_turns_it_off(tmp_path: Path) -> None:
    """Through the CLI on a grayscale model: calibration.json records the input-layer check; with
    ``quantize.input_layers_float=never`` there is no check and the deployed stem reads a DequantizeLinear."""
    model = tmp_path / "grey.pt2"
    ep = torch.export.export(grey_cnn(), (torch.randn(1, 1, 96, 96),))
    torch.export.save(ep, str(model))
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.integers(0, 256, (400, 1, 96, 96), dtype=np.uint8), y=rng.integers(0, 10, 400))
    runs = {}
    for mode in ("auto", "never"):
        run = tmp_path / f"run-{mode}"
        r = subprocess.run([sys.executable, "-m", "edgekd.cli", "compress", str(model), "--data", str(data),
                            "--target", "x86-cpu-vnni", "--no-distill", "--run-dir", str(run), "--quiet",
                            "--set", f"quantize.input_layers_float={mode}", "--set", "quantize.min_top1_agreement=0",
                            *FAST_BENCH], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        runs[mode] = run
    cal = json.loads((runs["auto"] / "03-quantize" / "x86-cpu-vnni" / "calibration.json").read_text())
    rec = cal["input_layers_float"]
    assert len(rec["candidates"]) == 1 and "reason" in rec  # the stem, under the exporter's name for it
    stem = rec["candidates"][0]
    deployed = runs["auto"] / "04-lower" / "x86-cpu-vnni" / "model.onnx"
    assert stem_reads(deployed, stem) == ("graph input" if rec["kept_float"] else "DequantizeLinear")
    report = (runs["auto"] / "report.md").read_text()
    assert ("input layers: " + rec["reason"] in report) == bool(rec.get("proposed"))
    never = json.loads((runs["never"] / "03-quantize" / "x86-cpu-vnni" / "calibration.json").read_text())
    assert "input_layers_float" not in never
    assert stem_reads(runs["never"] / "04-lower" / "x86-cpu-vnni" / "model.onnx", stem) == "DequantizeLinear"
