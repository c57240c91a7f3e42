"""ONNX export and parity on real runtimes (ONNX Runtime and OpenVINO), for zoo architectures incl. depthwise + SE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgekd.errors import ParityError
from edgekd.exporters import parity
from edgekd.exporters.onnx_export import export_onnx
from edgekd.models.zoo import build_model
from edgekd.runtimes import make_runner


@pytest.mark.parametrize(("arch", "shape"), [("resnet-s", (1, 1, 28, 28)), ("mobilenet-se-s", (1, 3, 32, 32))])
def test_export_parity_onnxruntime_and_openvino(tmp_path: Path, arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(arch, shape[1], 10).eval()
    # give BatchNorm non-trivial statistics so folding is exercised
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, *shape[1:]))
    model.eval()
    info = export_onnx(model, shape, tmp_path / "m.onnx", opset=17)
    assert info["exporter"] == "legacy" and info["opset"] == 17
    onnx.checker.check_model(str(tmp_path / "m.onnx"), full_check=True)
    x = np.random.default_rng(0).standard_normal((300, *shape[1:])).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    for backend in ("onnxruntime", "openvino"):
        stats = parity.compare(ref, parity.run_batched(make_runner(backend, tmp_path / "m.onnx", {"threads": 1}), x))
        assert stats["max_abs_diff"] < 1e-4, (backend, stats)
        assert stats["top1_agreement"] == 1.0


def test_parity_check_fails_loudly_past_tolerance() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    parity.check(parity.compare(ref, ref + 1e-6), what="x", atol=1e-3, min_agreement=1.0)
    with pytest.raises(ParityError, match="max abs diff"):
        parity.check(parity.compare(ref, ref + 0.01), what="x", atol=1e-3, min_agreement=0.0)
    with pytest.raises(ParityError, match="agreement 0.5000"):
        parity.check(parity.compare(ref, np.array([[1.0, 0.0], [1.0, 0.0]])), what="x", atol=None, min_agreement=0.99)


def test_dynamic_batch(tmp_path: Path) -> None:
    model = build_model("resnet-xs", 1, 10).eval()
    export_onnx(model, (1, 1, 28, 28), tmp_path / "m.onnx")
    run = make_runner("onnxruntime", tmp_path / "m.onnx", {})
    assert run(np.zeros((1, 1, 28, 28), np.float32)).shape == (1, 10)
    assert run(np.zeros((7, 1, 28, 28), np.float32)).shape == (7, 10)
