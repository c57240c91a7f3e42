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


def test_signed_pact_clips_both_sides_with_the_papers_gradient() -> None:
    p = PACT(4)
    p(torch.tensor([-0.2, 0.5]))  # a first batch with negative values: the signed variant
    assert bool(p.signed) and p.levels() == 7
    p.alpha.data = torch.tensor(1.0)
    x = torch.tensor([-2.0, -0.43, 0.3, 1.5, 2.0])
    y = p(x)
    # step α/7: −0.43 → −3/7, 0.3 → 2/7; ±α at the clips
    assert torch.allclose(y, torch.tensor([-1.0, -3 / 7, 2 / 7, 1.0, 1.0]), atol=1e-6)
    y.sum().backward()
    assert p.alpha.grad.item() == pytest.approx(-1 + 2)  # −1 below −α, +1 for each input ≥ α
    u = PACT(8)
    u(torch.rand(100))  # non-negative first batch: the paper's unsigned form, 255 levels
    assert not bool(u.signed) and u.levels() == 255


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


@pytest.mark.parametrize("bits,act", [("w8a8", "lsq"), ("w4a8", "lsq"), ("ternary", "lsq"), ("w8a8", "pact")])
def test_qdq_export_parity_onnxruntime_and_openvino(bits: str, act: str) -> None:
    import onnx
    import openvino as ov

    from edgekd.runtimes import ort_session

    torch.manual_seed(0)
    fp = build_model("resnet-xs", 1, 10).eval()
    s, _ = quantized_copy(fp, QATConfig(**parse_bits(bits), act_quantizer=act))
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


@pytest.mark.parametrize("teacher,arch", [("fmnist_teacher", "resnet-l"), ("fmnist_mobilenet_se_teacher", "mobilenet-se-s"),
                                          ("fmnist_vit_teacher", "vit-tiny")])
def test_w8a8_pact_before_training_is_within_a_point_of_fp(teacher: str, arch: str, fmnist) -> None:  # noqa: ANN001
    """Issue #14 §2: PACT on signed inputs (the normalised image, residual sums, GELU outputs) clamped them at 0
    (resnet-l 15.5 %, mobilenet-se-s 11.7 %, vit-tiny 10.3 % before training). Ranges from one batch of 64 training
    images, as train_qat initialises them; 2,000 real test images."""
    from conftest import REPO
    from edgekd.data import load_dataset
    from edgekd.kd.trainer import accuracy, predict_logits
    from edgekd.models.loading import load_model

    data = load_dataset("fashion-mnist", mean=[0.2860], std=[0.3530])
    fp = load_model(REPO / "examples" / f"{teacher}.state_dict.pt", arch=arch).module
    x, y = data.test.x[:2000], data.test.y[:2000]
    s, _ = quantized_copy(fp, QATConfig(**parse_bits("w8a8"), act_quantizer="pact"))
    s.eval()
    with torch.no_grad():
        s(torch.from_numpy(data.train.x[:64]))
    fp_top1, q_top1 = accuracy(predict_logits(fp, x), y), accuracy(predict_logits(s, x), y)
    assert fp_top1 > 0.85
    assert abs(fp_top1 - q_top1) <= 0.01, (fp_top1, q_top1)
    pacts = [m for m in s.modules() if isinstance(m, PACT)]
    assert pacts and any(bool(m.signed) for m in pacts)  # at least the normalised image is signed


# ---------------------------------------------------------------------------------- residual-branch TI (CNNs)


def test_residual_branches_are_found_by_tracing() -> None:
    from edgekd.quant.residual_ti import find_residual_branches

    m = build_model("resnet-l", 1, 10)
    br = find_residual_branches(m, find_blocks(m))
    assert [(b.first, b.out, b.last_layer) for b in br] == [
        (f"layer{i}.0.conv1.0", f"layer{i}.0.conv2.1", f"layer{i}.0.conv2.0") for i in (1, 2, 3)]
    se = build_model("mobilenet-se-s", 1, 10)
    br = find_residual_branches(se, find_blocks(se))
    # only the stride-1, same-width inverted residuals add their input; the projection conv follows squeeze-excite
    assert br and all(b.out.endswith("block.3.1") and b.last_layer.endswith("block.3.0") for b in br)
    assert find_residual_branches(se, ["stem"]) == []  # no add: not residual


def _resnet_pair(perturb: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    teacher = build_model("resnet-xs", 1, 10).eval()
    student = copy.deepcopy(teacher).eval()
    with torch.no_grad():
        for name, p in student.named_parameters():
            if name.startswith(perturb):
                p.add_(torch.randn_like(p) * 0.5)
    return teacher, student, torch.randn(3, 1, 28, 28)


@pytest.mark.parametrize(("mode", "perturbed", "downstream"), [("ro", "layer2.0.conv", "layer2.0.shortcut"),
                                                                ("rm", "layer2.0.conv1", "layer2.0.conv2")])
def test_residual_modes_replace_exactly_their_signal(mode: str, perturbed: str, downstream: str) -> None:
    """RO: a student whose branch convs are perturbed computes the teacher's function exactly (the branch output is
    the teacher's, the shortcut the student's own); perturbing the shortcut breaks it. RM: the first conv's error is
    hidden (the last conv reads the teacher's input), the last conv's is not."""
    from edgekd.quant.residual_ti import ResidualBranchIntervention, find_residual_branches

    teacher, student, x = _resnet_pair(perturbed)
    iv = ResidualBranchIntervention(student, teacher, find_residual_branches(teacher, find_blocks(teacher)))
    with torch.no_grad():
        zt = teacher(x)
        assert not torch.allclose(student(x), zt, atol=1e-4)
        teacher(x)
        iv.mode = mode
        assert torch.allclose(student(x), zt, atol=1e-5)
        assert len(iv.pop_local()) == 3  # one local (student, teacher) pair per branch
    teacher2, student2, _ = _resnet_pair(downstream)
    iv2 = ResidualBranchIntervention(student2, teacher2, find_residual_branches(teacher2, find_blocks(teacher2)))
    with torch.no_grad():
        zt2 = teacher2(x)
        iv2.mode = mode
        assert not torch.allclose(student2(x), zt2, atol=1e-4)


def test_residual_ro_gradient_flow() -> None:
    """RO: the task loss reaches the stem through the shortcuts but not the branch convs; the local loss reaches the
    branch convs but not the stem (the branch input is detached)."""
    import torch.nn.functional as F

    from edgekd.quant.residual_ti import ResidualBranchIntervention, find_residual_branches

    teacher, student, x = _resnet_pair("layer1.0.conv1")
    iv = ResidualBranchIntervention(student, teacher, find_residual_branches(teacher, find_blocks(teacher)))
    teacher(x)
    iv.mode = "ro"
    student(x).pow(2).sum().backward(retain_graph=True)
    assert student.layer1[0].conv1[0].weight.grad is None or student.layer1[0].conv1[0].weight.grad.abs().max() == 0
    assert student.stem[0].weight.grad.abs().max() > 0
    student.zero_grad(set_to_none=True)
    sum(F.mse_loss(s, t) for s, t in iv.pop_local()).backward()
    assert student.layer1[0].conv1[0].weight.grad.abs().max() > 0
    assert student.stem[0].weight.grad is None or student.stem[0].weight.grad.abs().max() == 0


# ---------------------------------------------------------------------------------------------- loss sets


def test_ternarybert_loss_set_terms_match_a_direct_computation() -> None:
    """Soft CE at T = 1, MSE on the embedding output and every block output, on the pre-softmax scores and on the
    attention sub-layer output (the input of norm2 in a pre-LN block), each computed here without hooks."""
    import torch.nn.functional as F

    from edgekd.quant.qat_losses import SignalPair, loss_terms, signal_points

    teacher, student, x = _vit_pair(("q", "proj"))
    blocks, attn = find_blocks(teacher), find_attention(teacher)
    points = signal_points(teacher, blocks, attn, "ternarybert")
    assert points["hidden/embedding"] == ("blocks.0", "in") and points["attn_out/blocks.1.attn"] == ("blocks.1.norm2", "in")
    sig = SignalPair(student, teacher, points)
    iv = AttentionIntervention(student, teacher, attn)
    with torch.no_grad():
        zt, zs = teacher(x), student(x)
    scores = [(iv.s_scores[a], iv.t_scores[a]) for a in attn]
    terms = loss_terms("ternarybert", zs, zt, sig, scores, temperature=4.0, feature_weight=1.0, attn_weight=1.0)

    def manual(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        with torch.no_grad():
            h = model.patch_embed(x).flatten(2).transpose(1, 2)
            h = torch.cat([model.cls_token.expand(3, -1, -1), h], 1) + model.pos_embed
            hidden, a_out, sc = [h], [], []
            for blk in model.blocks:
                a = blk.attn
                u = blk.norm1(h)
                b, n, c = u.shape
                q, k = (t.reshape(b, n, a.heads, c // a.heads).transpose(1, 2) for t in (a.q(u), a.k(u)))
                sc.append((q @ k.transpose(-2, -1)) * a.scale)
                h = h + a(u)
                a_out.append(h)
                h = h + blk.mlp(blk.norm2(h))
                hidden.append(h)
        return hidden, a_out, sc

    hs, aos, scs = manual(student)
    ht, aot, sct = manual(teacher)
    pred = -(F.softmax(zt, 1) * F.log_softmax(zs, 1)).sum(1).mean()
    assert float(terms["pred"]) == pytest.approx(float(pred), rel=1e-5)
    assert float(terms["rep"]) == pytest.approx(float(sum(F.mse_loss(a, b) for a, b in zip(hs, ht))), rel=1e-4)
    assert float(terms["out"]) == pytest.approx(float(sum(F.mse_loss(a, b) for a, b in zip(aos, aot))), rel=1e-4)
    assert float(terms["attn"]) == pytest.approx(float(sum(F.mse_loss(a, b) for a, b in zip(scs, sct))), rel=1e-4)
    assert float(terms["rep"]) > 0 and float(terms["out"]) > 0


def test_ternary_scale_per_layer_or_per_row() -> None:
    m = build_model("vit-tiny", 1, 10, width=32, depth=1)
    layer, _ = quantized_copy(m, QATConfig(**parse_bits("ternary"), ternary_scale="layer"))
    row, _ = quantized_copy(m, QATConfig(**parse_bits("ternary")))
    w = m.blocks[0].mlp[0].weight
    wl = layer.blocks[0].mlp[0].weight_fake_quant(w)
    wr = row.blocks[0].mlp[0].weight_fake_quant(w)
    assert wl.abs().unique().numel() == 2  # {0, α}: one α for the layer
    assert wr.abs().unique().numel() > 3  # one α per output row


def test_train_qat_ti_modes_run_their_schedules_and_keep_the_budget(fmnist) -> None:  # noqa: ANN001
    """Every TI mode trains for exactly the baseline's steps with the TI paper's loss set; the residual modes
    intervene on every residual branch of the real demo CNN and report per-block MSE after step 1 and at the end."""
    from conftest import REPO
    from edgekd.data import load_dataset
    from edgekd.models.loading import load_model
    from edgekd.quant.qat_train import QATTrainConfig, train_qat

    data = load_dataset("fashion-mnist", mean=[0.2860], std=[0.3530], limit=256)
    fp = load_model(REPO / "examples" / "fmnist_teacher.state_dict.pt", arch="resnet-l").module
    for ti in ("rg", "br"):
        s, _ = quantized_copy(fp, QATConfig(**parse_bits("w4a8")))
        res = train_qat(fp, s, data, QATTrainConfig(steps=6, ti=ti, ti_steps=3, batch_size=8, eval_every=3,
                                                    eval_samples=16))
        assert res["loss_set"] == "ternarybert" and res["ti_steps"] == 3 and res["curve"][-1]["step"] == 6
        assert set(res["block_mse_after_step1"]) == set(res["block_mse"]) == {"layer1.0", "layer2.0", "layer3.0"}
        assert res["weights_changed"] > 0.9 * res["total_params"]
        if ti == "rg":
            assert res["residual_branches"] == ["layer1.0.conv2.1", "layer2.0.conv2.1", "layer3.0.conv2.1"]
            assert res["curve"][1]["loss_local"] > 0  # step 1 trains the replaced branches locally
        assert "loss_local" not in res["curve"][-1]
