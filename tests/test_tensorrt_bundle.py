"""TensorRT target without TensorRT: profile → flags (pure), the Q/DQ lint, the INT8-vs-FP16 gate, the bundle.

No stand-in for the ``tensorrt`` module: engine builds are tested only where TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgekd.backends.tensorrt import builder_config, choose_precision, tensorrt_status, trtexec_args, trtexec_timing_args
from edgekd.backends.tensorrt_bundle import write_bundle
from edgekd.backends.tensorrt_lint import lint_qdq
from edgekd.errors import TargetError
from edgekd.fileio import sha256_file
from edgekd.targets import list_profiles, load_profile_file, resolve

TRT_PROFILES = [p.name for p in list_profiles() if p.backend == "tensorrt"]


def test_every_required_profile_exists_and_jetson_resolves() -> None:
    names = {p.name for p in list_profiles()}
    for n in ("jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "nvidia-dgpu", "raspberry-pi-5",
              "intel-cpu", "intel-igpu", "intel-npu", "x86-cpu"):
        assert n in names
    assert resolve("jetson").name == "jetson-orin-nano"
    assert {p.name for p in list_profiles("jetson-*")} >= {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx"}
    for p in list_profiles():
        if p.backend == "tensorrt":
            assert p.device.compute_capability and p.device.tensorrt, p.name
            # TensorRT's explicit INT8 needs signed symmetric Q/DQ: the profile's quantizer settings must make that
            assert p.onnxruntime.activation_type == "int8" and p.onnxruntime.activation_symmetric and not p.onnxruntime.reduce_range
            assert not p.onnxruntime.quantize_bias  # TensorRT keeps biases in float


def test_dla_core_beyond_the_device_is_a_schema_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    raw = yaml.safe_load(Path(resolve("jetson-orin-nano").source).read_text())
    raw["tensorrt"]["dla_core"] = 0  # the Orin Nano has no DLA
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(TargetError, match="dla_core"):
        load_profile_file(f)


@pytest.mark.parametrize("name", TRT_PROFILES)
def test_trtexec_flags_follow_the_profile(name: str) -> None:
    p = resolve(name)
    args = trtexec_args(p, "model.int8.onnx", "model.int8.engine", "int8", "input", [1, 1, 28, 28])
    assert args[:3] == ["trtexec", "--onnx=model.int8.onnx", "--saveEngine=model.int8.engine"]
    assert "--int8" in args and "--fp16" in args  # explicit INT8; unquantized layers in FP16
    assert "--timingCacheFile=timing.cache" in args
    big = max(p.measure.batch_sizes)
    assert "--minShapes=input:1x1x28x28" in args and f"--maxShapes=input:{big}x1x28x28" in args
    v = tuple(int(x) for x in p.device.tensorrt.split(".")[:2])
    pool = [a for a in args if a.startswith("--memPoolSize=workspace:")][0]
    assert pool.endswith("M") == (v >= (10,))  # TensorRT 10 takes a unit, 8.x MiB without one
    assert (f"--builderOptimizationLevel={p.tensorrt.builder_optimization_level}" in args) == (v >= (8, 6))
    if p.tensorrt.dla_core is not None:
        assert f"--useDLACore={p.tensorrt.dla_core}" in args and "--allowGPUFallback" in args
        assert "GPU_FALLBACK" in builder_config(p, "int8")["flags"]
        assert builder_config(p, "int8")["default_device_type"] == "DLA"
    else:
        assert not any(a.startswith("--useDLACore") for a in args)
    fp16 = trtexec_args(p, "model.fp32.onnx", "model.fp16.engine", "fp16", "input", [1, 1, 28, 28])
    assert "--fp16" in fp16 and "--int8" not in fp16
    assert builder_config(p, "fp16")["flags"][0] == "FP16" and "INT8" not in builder_config(p, "fp16")["flags"]
    assert builder_config(p, "int8")["memory_pool_limits"]["WORKSPACE"] == p.tensorrt.workspace_mb << 20
    t = trtexec_timing_args(p, "model.int8.engine", "input", [1, 1, 28, 28], 1, "times.json")
    assert "--loadEngine=model.int8.engine" in t and "--shapes=input:1x1x28x28" in t and "--exportTimes=times.json" in t


def test_dla_profile_puts_the_engine_on_dla() -> None:
    p = resolve("jetson-agx-orin-dla")
    args = trtexec_args(p, "m.onnx", "m.engine", "int8", "x", [1, 3, 32, 32])
    assert "--useDLACore=0" in args and "--allowGPUFallback" in args


def test_int8_vs_fp16_gate() -> None:
    fp16 = {"p50_ms": 1.0, "top1": 0.90}
    assert choose_precision(fp16, {"p50_ms": 0.5, "top1": 0.895}, 1.1, 1.0)[0] == "int8"
    prec, why = choose_precision(fp16, {"p50_ms": 0.95, "top1": 0.90}, 1.1, 1.0)
    assert prec == "fp16" and "1.05" in why  # faster, but not by the margin
    prec, why = choose_precision(fp16, {"p50_ms": 0.3, "top1": 0.87}, 1.1, 1.0)
    assert prec == "fp16" and "3.00 pt" in why  # fast but over the accuracy budget


def _qdq_model(path: Path, *, act_zp_dtype: int = TensorProto.INT8, act_zp: int = 0, w_axis: int = 0, opset: int = 17,
               per_channel_act: bool = False, contrib: bool = False) -> Path:
    """x → Q → DQ → Conv(DQ(W int8, per-channel)) → y: the smallest explicit-INT8 graph."""
    w = np.random.default_rng(0).integers(-127, 128, size=(4, 1, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array([0.05] * (4 if per_channel_act else 1), np.float32).reshape(-1) if per_channel_act
                                else np.array(0.05, np.float32), "x_scale"),
        helper.make_tensor("x_zp", act_zp_dtype, [], [act_zp]),
        numpy_helper.from_array(w, "w_q"),
        numpy_helper.from_array(np.full(4, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(4, np.int8), "w_zp"),
    ]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["wd"], name="dq_w", axis=w_axis),
             helper.make_node("Conv", ["xd", "wd"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    if contrib:
        nodes.append(helper.make_node("Gelu", ["y"], ["y2"], domain="com.microsoft", name="gelu"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y2" if contrib else "y", TensorProto.FLOAT, None)], inits)
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    onnx.save(helper.make_model(g, opset_imports=opsets), str(path))
    return path


def test_lint_accepts_tensorrt_ready_qdq(tmp_path: Path) -> None:
    rep = lint_qdq(_qdq_model(tmp_path / "ok.onnx"), 17)
    assert rep.ok, rep.errors
    assert rep.stats["quantized_compute_ops"] == 1 and rep.stats["dequantize_linear"] == 2


@pytest.mark.parametrize("kw, needle", [
    ({"act_zp_dtype": TensorProto.UINT8, "act_zp": 128}, "uint8"),
    ({"act_zp": 3}, "non-zero zero-point"),
    ({"w_axis": 1}, "axis 1"),
    ({"opset": 19}, "opset 19"),
    ({"per_channel_act": True}, "per-channel scales on an activation"),
    ({"contrib": True}, "com.microsoft::Gelu"),
])
def test_lint_names_each_problem(tmp_path: Path, kw: dict, needle: str) -> None:
    rep = lint_qdq(_qdq_model(tmp_path / "bad.onnx", **kw), 17)
    assert not rep.ok
    assert any(needle in e for e in rep.errors), rep.errors


def test_bundle_holds_script_manifest_and_samples(tmp_path: Path) -> None:
    p = resolve("jetson-xavier-nx")
    q = _qdq_model(tmp_path / "q.onnx")
    fp = tmp_path / "f.onnx"
    shutil.copyfile(q, fp)
    x = np.zeros((5, 1, 8, 8), np.float32)
    res = write_bundle(p, q, fp, tmp_path / "bundle", [1, 1, 8, 8], (x, np.arange(5)),
                       {"int8": {"top1": 0.9, "gate_value": 0.9, "samples": 5},
                        "fp32": {"top1": 0.91, "gate_value": 0.91, "samples": 5}, "gate_reason": "ok"}, "0.1.0")
    b = tmp_path / "bundle"
    for f in ("model.int8.onnx", "model.fp32.onnx", "build.sh", "manifest.json", "profile.yaml", "samples.npz", "README.md"):
        assert (b / f).exists(), f
    m = json.loads((b / "manifest.json").read_text())
    assert m["tensorrt_wanted"] == "8.5" and m["compute_capability_wanted"] == "7.2"
    assert m["onnx"]["int8_onnx"]["sha256"] == sha256_file(b / "model.int8.onnx") == sha256_file(q)
    assert res["files"]["int8_onnx"] == b / "model.int8.onnx"
    assert m["qdq_lint"]["ok"] and m["expected_accuracy"]["int8"]["top1"] == 0.9
    assert m["trtexec"]["int8"] == trtexec_args(p, "model.int8.onnx", "model.int8.engine", "int8", "x", [1, 1, 8, 8])
    sh = (b / "build.sh").read_text()
    assert "--saveEngine=model.int8.engine" in sh and "--saveEngine=model.fp16.engine" in sh and "timing.cache" in sh
    assert "--memPoolSize=workspace:1024" in sh and "--builderOptimizationLevel" not in sh  # TensorRT 8.5 syntax
    assert subprocess.run(["bash", "-n", str(b / "build.sh")]).returncode == 0  # the script parses
    assert (b / "build.sh").stat().st_mode & 0o111


@pytest.mark.skipif(not tensorrt_status()[0], reason=f"no TensorRT engine build here: {tensorrt_status()[1]}")
def test_engine_builds_where_tensorrt_exists(tmp_path: Path) -> None:
    from edgekd.backends.tensorrt import build_engine

    q = _qdq_model(tmp_path / "q.onnx")
    info = build_engine(q, tmp_path / "m.engine", resolve("nvidia-dgpu"), "int8", "x", [1, 1, 8, 8], tmp_path / "t.cache")
    assert (tmp_path / "m.engine").stat().st_size > 0 and (tmp_path / "t.cache").exists() and info["precision"] == "int8"


def test_the_bundles_gate_is_the_same_rule_as_the_pipelines(tmp_path: Path) -> None:
    """build.sh runs gate.py on the device; gate.py holds edgekd.backends.gate.decide verbatim, so the device decides
    by the rule lowering and bench use. Fed the same measurements, both choose the same precision."""
    from edgekd.backends.gate import decide

    p = resolve("jetson-orin-nano")
    q = _qdq_model(tmp_path / "q.onnx")
    fp = tmp_path / "f.onnx"
    shutil.copyfile(q, fp)
    b = tmp_path / "bundle"
    write_bundle(p, q, fp, b, [1, 1, 8, 8], None, {"int8": {"top1": 0.90, "gate_value": 0.90, "samples": 5},
                                                   "fp32": {"top1": 0.91, "gate_value": 0.91, "samples": 5},
                                                   "gate_reason": "ok"}, "0.1.0")
    assert "python3 gate.py" in (b / "build.sh").read_text()
    for fp16_ms, int8_ms in ((1.0, 0.5), (1.0, 0.97)):
        (b / "times.fp16.json").write_text(json.dumps([{"computeMs": fp16_ms}] * 3))
        (b / "times.int8.json").write_text(json.dumps([{"computeMs": int8_ms}] * 3))
        out = subprocess.run([sys.executable, "gate.py"], cwd=b, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        device = json.loads((b / "device_result.json").read_text())
        here = decide(0.91, 0.90, fp16_ms, int8_ms, p.tensorrt.accuracy_budget_points, p.tensorrt.int8_min_speedup, "fp16")
        assert (device["chosen"], device["reason"]) == here
    assert json.loads((b / "device_result.json").read_text())["chosen"] == "fp16"  # 1.03× is below the margin


def test_a_gpu_of_another_compute_capability_is_refused_in_one_line() -> None:
    from edgekd.backends.tensorrt import check_compute_capability

    check_compute_capability(resolve("jetson-orin-nano"), have="8.7")  # the profile's own GPU: fine
    with pytest.raises(TargetError, match="compute capability 7.5; target jetson-orin-nano wants 8.7") as e:
        check_compute_capability(resolve("jetson-orin-nano"), have="7.5")
    assert len(e.value.one_line()) <= 193
