"""Every supported model-file format loads to the same function; pickles are refused without opt-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgekd.errors import ModelLoadError
from edgekd.models.loading import load_model, parse_shape, probe
from helpers import TinyNet, make_net

X = torch.randn(3, 1, 28, 28)


@pytest.fixture()
def net() -> TinyNet:
    return make_net().eval()


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    with torch.no_grad():
        return torch.allclose(a(X), b(X), atol=1e-6)


def test_torchscript(tmp_path: Path, net: TinyNet) -> None:
    p = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(net, X), p)
    lm = load_model(p, input_shape="1x1x28x28")
    assert lm.format == "torchscript" and same(lm.module, net) and lm.input_shape == (1, 1, 28, 28)


def test_exported_program_records_its_input_shape(tmp_path: Path, net: TinyNet) -> None:
    p = tmp_path / "m.pt2"
    ep = torch.export.export(net, (torch.randn(2, 1, 28, 28),), dynamic_shapes={"x": {0: torch.export.Dim("b")}})
    torch.export.save(ep, p, extra_files={"edgekd.json": json.dumps({"edgekd": {"normalize": {"mean": [0.5], "std": [0.2]}}})})
    lm = load_model(p)
    assert lm.format == "torch.export" and lm.input_shape == (1, 1, 28, 28)
    assert lm.meta["normalize"]["mean"] == [0.5]
    assert same(lm.module, net)
    assert "features.0" in dict(lm.module.named_modules())  # module paths survive for feature hooks


@pytest.mark.parametrize("arch", ["helpers:make_net", "FILE:make_net"])
def test_state_dict_with_arch(tmp_path: Path, net: TinyNet, arch: str) -> None:
    p = tmp_path / "m.pt"
    torch.save(net.state_dict(), p)
    arch = arch.replace("FILE", str(Path(__file__).parent / "helpers.py"))
    lm = load_model(p, arch=arch, input_shape=(1, 1, 28, 28))
    assert lm.format == "state_dict" and same(lm.module, net)


def test_state_dict_in_a_checkpoint_wrapper(tmp_path: Path, net: TinyNet) -> None:
    p = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": net.state_dict()}, p)
    assert same(load_model(p, arch="helpers:make_net").module, net)


def test_state_dict_of_a_zoo_model(tmp_path: Path) -> None:
    from edgekd.models.zoo import build_model

    m = build_model("mobilenet-se-s", 3, 7).eval()
    p = tmp_path / "z.pt"
    torch.save(m.state_dict(), p)
    lm = load_model(p, arch="mobilenet-se-s", input_shape="1x3x32x32")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(lm.module(x), m(x))


def test_state_dict_without_arch_is_refused_with_a_hint(tmp_path: Path, net: TinyNet) -> None:
    p = tmp_path / "m.pt"
    torch.save(net.state_dict(), p)
    with pytest.raises(ModelLoadError, match="--arch"):
        load_model(p)


def test_state_dict_that_does_not_fit_the_arch(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(3)}, p)
    with pytest.raises(ModelLoadError, match="does not fit"):
        load_model(p, arch="helpers:make_net")


def test_pickled_module_needs_opt_in(tmp_path: Path, net: TinyNet) -> None:
    p = tmp_path / "whole.pt"
    torch.save(net, p)
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        load_model(p)
    lm = load_model(p, allow_pickle=True)
    assert lm.format == "pickled-module" and same(lm.module, net)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="ONNX"):
        load_model(tmp_path / "m.onnx")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        load_model(tmp_path / "junk.pt")


def test_parse_shape_and_probe(net: TinyNet) -> None:
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    assert parse_shape("1,1,28,28") == (1, 1, 28, 28)
    with pytest.raises(ModelLoadError):
        parse_shape("abc")
    assert probe(net, (1, 1, 28, 28)) == {"num_classes": 10}
    with pytest.raises(ModelLoadError, match="input of shape"):
        probe(net, (1, 3, 28, 28))


def test_a_pt2_saved_at_batch_1_runs_at_any_batch_and_compresses(tmp_path: Path, fmnist: Path) -> None:
    """torch.export specialises the batch of its example: a .pt2 saved from one sample accepts batch 1 only. It runs
    one sample at a time (the same outputs), exports with its batch made symbolic, and the pipeline goes through."""
    import edgekd
    from edgekd.fileio import read_json
    from edgekd.models.zoo import build_model

    torch.manual_seed(0)
    net = build_model("resnet-xs", 1, 10).eval()
    torch.export.save(torch.export.export(net, (torch.randn(1, 1, 28, 28),)), str(tmp_path / "b1.pt2"))
    lm = load_model(tmp_path / "b1.pt2")
    assert "fixed batch of 1" in lm.notes[0]
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(lm.module(x), net(x), atol=1e-5)
    edgekd.compress(tmp_path / "b1.pt2", targets=["x86-cpu"], run_dir=str(tmp_path / "run"), distill={"enabled": False},
                    data={"path": "fashion-mnist", "limit": 300, "eval_limit": 100}, quantize={"calibration": "small",
                    "min_top1_agreement": 0.5}, bench={"iterations": 10, "warmup": 1, "warmup_seconds": 0.01, "rounds": 1})
    par = read_json(tmp_path / "run" / "02-export" / "parity.json")
    assert par["teacher"]["batch_dynamic"] is True  # the batch-1 program's ONNX, made symbolic and checked
    lat = read_json(tmp_path / "run" / "05-bench" / "x86-cpu" / "latency.json")["results"]
    assert all(set(r["latency"]) == {"1", "8"} for r in lat)
