"""OpenVINO exact int4: ≤4-bit QAT MatMul weights become i4 constants that the CPU plugin runs as int4 FullyConnected."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekd.backends.openvino import lower_openvino
from edgekd.runtimes import make_runner
from edgekd.targets import resolve


def _model(path: Path, low: int, high: int) -> Path:
    """x → MatMul(DQ(int8 codes in [low, high], per-column scales)) → Relu → Conv(DQ(int8)) on a reshaped tensor."""
    rng = np.random.default_rng(0)
    w = rng.integers(low, high + 1, size=(64, 48)).astype(np.int8)
    cw = rng.integers(-7, 8, size=(4, 3, 3, 3)).astype(np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("Reshape", ["hr", "shape"], ["img"]),
             helper.make_node("DequantizeLinear", ["cq", "cs"], ["cd"], axis=0),
             helper.make_node("Conv", ["img", "cd"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["y"])]
    inits = [numpy_helper.from_array(w, "wq"), numpy_helper.from_array(np.full(48, 0.05, np.float32), "ws"),
             numpy_helper.from_array(np.array([1, 3, 4, 4], np.int64), "shape"),
             numpy_helper.from_array(cw, "cq"), numpy_helper.from_array(np.full(4, 0.1, np.float32), "cs")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_4bit_matmul_weights_run_as_exact_int4(tmp_path: Path) -> None:
    onnx_path = _model(tmp_path / "m.onnx", -7, 7)
    prof = resolve("intel-cpu")
    res = lower_openvino(onnx_path, prof, tmp_path / "int4")
    assert res["int4_weight_constants"] == 1  # the MatMul weight; the conv weight stays int8 (no int4 conv kernel)
    assert any(k.startswith("FullyConnected") for k in res["low_bit_kernels"]), res["executed_precisions"]
    off = prof.model_copy(update={"openvino": prof.openvino.model_copy(update={"int4_matmul": False})})
    ref = lower_openvino(onnx_path, off, tmp_path / "int8")
    assert ref["int4_weight_constants"] == 0 and not ref["low_bit_kernels"]
    assert (tmp_path / "int4/model.bin").stat().st_size < (tmp_path / "int8/model.bin").stat().st_size
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    a = make_runner("openvino", tmp_path / "int4/model.xml", {"threads": 1})(x)
    b = make_runner("openvino", tmp_path / "int8/model.xml", {"threads": 1})(x)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # the same integers and scales: the same result


def test_8bit_weights_are_left_alone(tmp_path: Path) -> None:
    res = lower_openvino(_model(tmp_path / "m.onnx", -100, 100), resolve("intel-cpu"), tmp_path / "out")
    assert res["int4_weight_constants"] == 0
