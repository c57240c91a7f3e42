"""Quantizers (LSQ, PACT, TWN) against their papers' formulas, placement policy, Teacher Intervention modes on toy
models where the effect is computable by hand, the TI schedules, and Q/DQ export parity on ONNX Runtime and OpenVINO."""

from __future__ import annotations

import copy
import io
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.errors import UsageError
from edgekd.models.zoo import build_model
from edgekd.quant.intervention import AttentionIntervention, BlockIntervention, find_attention, find_blocks, ti_b_p, ti_g_mode
from edgekd.quant.qat import QATConfig, parse_bits, quantize_, quantized_copy, set_export_mode
from edgekd.quant.quantizers import LSQ, PACT, TWN


def test_lsq_forward_and_gradients_match_the_paper() -> None:
    q = LSQ(3)  # signed activations: Q_N = 4, Q_P = 3
    q.initialized.fill_(True)
    q.signed.fill_(True)
    q.step.data = torch.tensor([0.5])
    v = torch.tensor([[-1.0, 0.26, 0.74, 3.0]], requires_grad=True)
    out = q(v)
    assert torch.allclose(out, torch.tensor([[-1.0, 0.5, 0.5, 1.5]]))
    out.sum().backward()
    # ∂v̂/∂s: −v/s + round(v/s) inside the range, Q_P above it; scaled by g = 1/√(N·Q_P), N = 4 features
    expected = (0.0 + (-0.52 + 1) + (-1.48 + 1) + 3) / math.sqrt(4 * 3)
    assert q.step.grad.item() == pytest.approx(expected, rel=1e-5)
    assert v.grad.tolist() == [[1.0, 1.0, 1.0, 0.0]]  # STE inside the range, zero where clipped


def test_lsq_weight_init_and_narrow_range() -> None:
    q = LSQ(4, per_channel=True, weight=True)
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0], [0.1, 0.1, -0.1, 0.1]])
    q(w)
    assert q.qrange() == (-7, 7)
    assert torch.allclose(q.step.data, 2 * w.abs().mean(1) / math.sqrt(7))


def test_twn_threshold_and_scale() -> None:
    w = torch.tensor([[0.1, -0.5, 0.9, -0.05]], requires_grad=True)
    t = TWN()
    alpha, delta = t.alpha_delta(w)
    assert delta.item() == pytest.approx(0.7 * 0.3875)
    assert alpha.item() == pytest.approx(0.7)  # mean of |−0.5|, |0.9|
    out = t(w)
    assert torch.allclose(out, torch.tensor([[0.0, -0.7, 0.7, 0.0]]))
    out.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 1.0]]  # straight-through


def test_pact_clip_gradient() -> None:
    p = PACT(4)
    p.initialized.fill_(True)
    p.alpha.data = torch.tensor(1.0)
    x = torch.tensor([-0.5, 0.3, 0.9, 1.5, 2.0])
    y = p(x)
    assert y.min().item() == 0 and y.max().item() == pytest.approx(1.0)
    y.sum().backward()
    assert p.alpha.grad.item() == pytest.approx(2.0)  # ∂y_q/∂α = 1 for the two inputs ≥ α


def test_parse_bits() -> None:
    assert parse_bits("w4a8") == {"weight_bits": 4, "act_bits": 8, "weight_quantizer": "lsq"}
    assert parse_bits("ternary")["weight_quantizer"] == "twn"
    with pytest.raises(UsageError):
        parse_bits("w9")


def test_placement_first_last_and_keep_fp() -> None:
    m = build_model("resnet-xs", 1, 10)
    plan = quantize_(m, QATConfig(weight_bits=4, act_bits=8, keep_fp=["layer2.0.shortcut"]))
    assert plan["stem.0"]["weight_bits"] == 8 and plan["fc"]["weight_bits"] == 8  # first and last at 8 bits
    assert plan["layer1.0.conv1.0"]["weight_bits"] == 4
    assert plan["layer2.0.shortcut.0"]["weight_bits"] == 32
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # folded
    with pytest.raises(UsageError, match="layer2.0.shortcut"):
        quantize_(build_model("resnet-xs", 1, 10), QATConfig(keep_fp=["layer2.0.shortcutt"]))


def test_bn_folding_preserves_the_function() -> None:
    torch.manual_seed(0)
    m = build_model("resnet-xs", 1, 10)
    m.train()
    m(torch.randn(32, 1, 28, 28))
    m.eval()
    x = torch.randn(4, 1, 28, 28)
    ref = m(x)
    from edgekd.quant.qat import fold_batchnorm

    assert fold_batchnorm(m) > 0
    assert torch.allclose(m(x), ref, atol=1e-5)


# ---------------------------------------------------------------------------------------------- Teacher Intervention


def _vit_pair(perturb: tuple[str, ...]) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    teacher = build_model("vit-tiny", 1, 10, width=32, depth=2).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if any(f".attn.{k}." in name for k in perturb):
                p.add_(torch.randn_like(p) * 0.5)
    return teacher, student, torch.randn(3, 1, 28, 28)


@pytest.mark.parametrize(("mode", "perturbed"), [("o", ("q", "k", "v", "proj")), ("c", ("q", "k", "v")), ("m", ("q", "k"))])
def test_each_attention_mode_replaces_exactly_its_signal(mode: str, perturbed: tuple[str, ...]) -> None:
    """Perturb only the sub-layers upstream of the replaced signal: with the intervention the student computes the
    teacher's function exactly; without it, it does not. Perturbing one layer more breaks the equality."""
    teacher, student, x = _vit_pair(perturbed)
    iv = AttentionIntervention(student, teacher, find_attention(teacher))
    with torch.no_grad():
        zt = teacher(x)
        iv.mode = "none"
        assert not torch.allclose(student(x), zt, atol=1e-4)
        teacher(x)
        iv.mode = mode
        assert torch.allclose(student(x), zt, atol=1e-5)
    downstream = {"m": "v", "c": "proj", "o": None}[mode]
    if downstream:
        teacher2, student2, _ = _vit_pair((*perturbed, downstream))
        iv2 = AttentionIntervention(student2, teacher2, find_attention(teacher2))
        with torch.no_grad():
            zt2 = teacher2(x)
            iv2.mode = mode
            assert not torch.allclose(student2(x), zt2, atol=1e-4)


@pytest.mark.parametrize(("mode", "no_grad", "grad"), [("o", ["q", "k", "v", "proj"], ["mlp.0"]),
                                                        ("c", ["q", "k", "v"], ["proj", "mlp.0"]),
                                                        ("m", ["q", "k"], ["v", "proj"])])
def test_gradient_flow_per_mode(mode: str, no_grad: list[str], grad: list[str]) -> None:
    """The spec's §1.3 table: from the task loss, replaced sub-layers' producers get no gradient."""
    teacher, student, x = _vit_pair(("q",))
    iv = AttentionIntervention(student, teacher, find_attention(teacher))
    teacher(x)
    iv.mode = mode
    student(x).pow(2).sum().backward()
    for name in no_grad:
        g = student.blocks[0].attn.get_submodule(name).weight.grad
        assert g is None or g.abs().max() == 0, (mode, name)
    for name in grad:
        mod = student.blocks[0].get_submodule(name) if name.startswith("mlp") else student.blocks[0].attn.get_submodule(name)
        assert mod.weight.grad is not None and mod.weight.grad.abs().max() > 0, (mode, name)


def test_block_intervention_feeds_teacher_inputs() -> None:
    torch.manual_seed(0)
    teacher = build_model("resnet-xs", 1, 10).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.layer1.parameters():
            p.add_(torch.randn_like(p))
    blocks = find_blocks(teacher)
    assert blocks == ["layer1.0", "layer2.0", "layer3.0"]
    assert find_blocks(build_model("vit-tiny", 1, 10)) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]  # not "norm"
    iv = BlockIntervention(student, teacher, blocks)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        zt = teacher(x)
        iv.p = 1.0
        zs = student(x)
    # layer1 is perturbed, but layer2 receives the teacher's layer1 output, so layer2/3 and the logits match
    assert not torch.allclose(iv.s_out["layer1.0"], iv.t_out["layer1.0"])
    assert torch.allclose(iv.s_out["layer2.0"], iv.t_out["layer2.0"], atol=1e-6)
    assert torch.allclose(zs, zt, atol=1e-5)
    iv.p = 0.0
    with torch.no_grad():
        assert not torch.allclose(student(x), zt, atol=1e-4)


def test_bad_intervention_path_is_a_clear_error() -> None:
    m = build_model("resnet-xs", 1, 10)
    with pytest.raises(UsageError, match="did you mean"):
        BlockIntervention(copy.deepcopy(m), m, ["layer9.0"])


def test_ti_g_schedule() -> None:
    modes = [ti_g_mode(t, 60) for t in range(60)]
    assert modes.count("o") == 10 and modes.count("c") == 10 and modes.count("m") == 40
    assert modes[:10] == ["o"] * 10 and modes[10:20] == ["c"] * 10
    assert ti_b_p(0, 10, 10) == (1.0, False)
    assert ti_b_p(15, 10, 10) == (0.5, True)
    assert ti_b_p(25, 10, 10) == (0.0, False)


# ---------------------------------------------------------------------------------------------- export parity


@pytest.mark.parametrize("bits", ["w8a8", "w4a8", "ternary"])
def test_qdq_export_parity_onnxruntime_and_openvino(bits: str) -> None:
    import onnx
    import openvino as ov

    from edgekd.runtimes import ort_session

    torch.manual_seed(0)
    fp = build_model("resnet-xs", 1, 10).eval()
    s, _ = quantized_copy(fp, QATConfig(**parse_bits(bits)))
    x = torch.randn(200, 1, 28, 28)
    s.eval()
    s(x[:64])  # initialise ranges
    with torch.no_grad():
        ref = s(x).numpy()
    set_export_mode(s, True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(s, (x[:2],), buf, dynamo=False, opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "b"}, "logits": {0: "b"}})
    g = onnx.load_from_string(buf.getvalue())
    qs = [n for n in g.graph.node if n.op_type == "QuantizeLinear"]
    assert len(qs) >= 10
    inits = {i.name: i for i in g.graph.initializer}
    for n in qs:  # zero-points are 0 (symmetric), as TensorRT needs
        if len(n.input) > 2 and n.input[2] in inits:
            assert not onnx.numpy_helper.to_array(inits[n.input[2]]).any()
    sess = ort_session(_write(buf.getvalue()), graph_optimization="all")
    got_ort = sess.run(None, {"input": x.numpy()})[0]
    core = ov.Core()
    compiled = core.compile_model(core.read_model(_write(buf.getvalue())), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got_ov = np.array(compiled.create_infer_request().infer({0: x.numpy()})[compiled.outputs[0]])
    for got in (got_ort, got_ov):
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.995
        assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def _write(data: bytes) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
    f.write(data)
    f.close()
    return f.name


@pytest.mark.parametrize("bits", ["w4a8", "ternary"])
def test_low_bit_linear_weights_lower_to_matmulnbits_exactly(bits: str, tmp_path) -> None:  # noqa: ANN001
    """ViT Linear layers with ≤4-bit QAT weights run on ORT's MatMulNBits with identical outputs."""
    import onnx

    from edgekd.exporters.nbits import to_matmul_nbits
    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.runtimes import make_runner

    torch.manual_seed(0)
    m = build_model("vit-tiny", 1, 10, width=32, depth=2).eval()
    s, _ = quantized_copy(m, QATConfig(**parse_bits(bits)))
    x = torch.randn(16, 1, 28, 28)
    s.eval()
    s(x)
    set_export_mode(s, True)
    info = export_onnx(s, (1, 1, 28, 28), tmp_path / "q.onnx")
    assert info["int8_weight_initializers"] >= 10
    model = onnx.load(str(tmp_path / "q.onnx"))
    n = to_matmul_nbits(model)
    assert n == 2 * 6  # q, k, v, proj, mlp.0, mlp.2 in each of the 2 blocks (patch embed and head stay 8-bit)
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp_path / "n.onnx"))
    a = make_runner("onnxruntime", tmp_path / "q.onnx", {"graph_optimization": "disable"})(x.numpy())
    b = make_runner("onnxruntime", tmp_path / "n.onnx", {"graph_optimization": "disable"})(x.numpy())
    assert np.abs(a - b).max() < 1e-5
    assert (tmp_path / "n.onnx").stat().st_size < (tmp_path / "q.onnx").stat().st_size
