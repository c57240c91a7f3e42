"""ONNX files as teachers (issue #19): quantized, lowered and benchmarked as they are, or distilled from, with
ONNX Runtime computing the teacher's outputs; what needs gradients through the teacher is refused in one line."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import edgekd
from edgekd.errors import UsageError
from edgekd.exporters.onnx_export import export_onnx
from edgekd.fileio import read_json
from edgekd.models.loading import load_model

SMALL = {"data": {"path": "fashion-mnist", "limit": 1200, "eval_limit": 300}, "quantize": {"calibration": "small"},
         "bench": {"iterations": 20, "warmup": 2, "warmup_seconds": 0.05, "rounds": 1}}


@pytest.fixture(scope="module")
def onnx_teacher(tmp_path_factory: pytest.TempPathFactory, demo_teacher: Path) -> Path:
    lm = load_model(demo_teacher)
    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    export_onnx(lm.module, (1, 1, 28, 28), path, program=lm.program)
    m = onnx.load(str(path))  # the preprocessing travels in the file's metadata
    m.metadata_props.add(key="edgekd", value='{"normalize": {"mean": [0.286], "std": [0.353]}}')
    onnx.save(m, str(path))
    return path


def test_onnx_teacher_agrees_with_its_pytorch_source(onnx_teacher: Path, demo_teacher: Path) -> None:
    lm, om = load_model(demo_teacher), load_model(onnx_teacher)
    assert om.format == "onnx" and om.input_shape == (1, 1, 28, 28) and om.meta["normalize"]["mean"] == [0.286]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(om.module(x), lm.module(x), atol=1e-4)


def test_static_batch_onnx_is_made_dynamic_in_memory(tmp_path: Path) -> None:
    from edgekd.models.zoo import build_model

    net = build_model("resnet-xs", 1, 10).eval()
    torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(tmp_path / "b1.onnx"), dynamo=False, opset_version=17)
    before = (tmp_path / "b1.onnx").read_bytes()
    lm = load_model(tmp_path / "b1.onnx")
    assert "made symbolic" in lm.notes[0] and (tmp_path / "b1.onnx").read_bytes() == before  # the file is untouched
    with torch.no_grad():
        assert torch.allclose(lm.module(torch.ones(3, 1, 28, 28)), net(torch.ones(3, 1, 28, 28)), atol=1e-4)


def test_onnx_teacher_quantized_as_it_is(onnx_teacher: Path, fmnist: Path, tmp_path: Path) -> None:
    rep = edgekd.compress(onnx_teacher, targets=["x86-cpu"], run_dir=str(tmp_path / "run"), distill={"enabled": False},
                          **SMALL)
    rows = {(r["model"], r["precision"]): r for r in rep["rows"]}
    assert set(rows) == {("teacher", "fp32"), ("teacher", "int8")}
    assert rows[("teacher", "fp32")]["top1"] > 0.9 and rows[("teacher", "int8")]["top1"] > 0.88
    man = read_json(tmp_path / "run" / "manifest.json")
    assert man["inputs"]["model"]["format"] == "onnx" and man["inputs"]["data"]["normalize"]["mean"] == [0.286]


def test_a_student_distilled_from_an_onnx_teacher(onnx_teacher: Path, fmnist: Path, tmp_path: Path) -> None:
    rep = edgekd.compress(onnx_teacher, targets=["x86-cpu"], run_dir=str(tmp_path / "run"),
                          distill={"student": "resnet-xs", "epochs": 2, "batch_size": 64, "lr": 0.05}, **SMALL)
    rows = {(r["model"], r["precision"]): r for r in rep["rows"]}
    assert rows[("student", "fp32")]["top1"] > 0.4  # 1,100 images, 2 epochs of a tiny student: 4× chance (10 %)
    assert rows[("student", "int8")]["agreement_with_teacher"] > 0.4
    hist = read_json(tmp_path / "run" / "01-distill" / "history.json")
    assert hist[-1]["loss_logit"] < hist[0]["loss_logit"]  # the KD loss moved: the teacher's outputs were used


DATA = {"data": {"path": "fashion-mnist"}}


@pytest.mark.parametrize("kw,word", [({"data": {"path": None}}, "data-free"),
                                     ({**DATA, "distill": {"features": [{"student": "layer1", "teacher": "layer1"}]}}, "feature"),
                                     ({**DATA, "distill": {"enabled": False}, "quantize": {"qat": "kd"}}, "QAT")])
def test_what_needs_a_pytorch_teacher_is_refused(onnx_teacher: Path, tmp_path: Path, kw: dict, word: str) -> None:
    with pytest.raises(UsageError, match=word):
        edgekd.compress(onnx_teacher, targets=["x86-cpu"], run_dir=str(tmp_path / "run"), **kw)
    assert not (tmp_path / "run").exists()
