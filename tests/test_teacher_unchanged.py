"""A teacher handed to any training or synthesis entry point comes back unchanged, and a student built from it
afterwards trains every weight (issue #14 §1: ``train_qat``, ``train_student``, ``synthesize`` and ``train_dfad``
used to set ``requires_grad=False`` on the caller's model, so the next student copied from it trained only its
quantizer step sizes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import REPO
from edgekd.config import DistillConfig
from edgekd.data import load_dataset
from edgekd.models.freeze import check_student, frozen
from edgekd.models.loading import load_model
from edgekd.models.zoo import build_model
from edgekd.quant.qat import QATConfig, parse_bits, quantized_copy
from edgekd.quant.qat_train import QATTrainConfig, train_qat


@pytest.fixture(scope="module")
def data(fmnist):  # noqa: ANN001, ANN201
    return load_dataset("fashion-mnist", mean=[0.2860], std=[0.3530], limit=512)


@pytest.fixture()
def vit() -> nn.Module:
    return load_model(REPO / "examples" / "fmnist_vit_teacher.state_dict.pt", arch="vit-tiny").module


def state(model: nn.Module) -> tuple[list[bool], list[bool], dict[str, torch.Tensor]]:
    return ([p.requires_grad for p in model.parameters()], [m.training for m in model.modules()],
            {k: v.detach().clone() for k, v in model.state_dict().items()})


def assert_unchanged(model: nn.Module, before: tuple[list[bool], list[bool], dict[str, torch.Tensor]]) -> None:
    flags, modes, tensors = state(model)
    assert flags == before[0], "requires_grad flags of the caller's model changed"
    assert modes == before[1], "train/eval modes of the caller's model changed"
    assert tensors.keys() == before[2].keys() and all(torch.equal(tensors[k], before[2][k]) for k in tensors)


def weights_that_did_not_move(student: nn.Module, steps: int, data, lr: float = 1e-3) -> list[str]:  # noqa: ANN001
    teacher = student.teacher_for_test  # type: ignore[attr-defined]
    del student.teacher_for_test
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    res = train_qat(teacher, student, data, QATTrainConfig(steps=steps, batch_size=16, lr=lr, eval_every=steps,
                                                           eval_samples=32))
    still = [n for n, p in student.named_parameters() if n.endswith("weight") and torch.equal(before[n], p.detach())]
    if not still:
        assert res["trainable_params"] == res["total_params"] and res["weights_changed"] > 0
    return still


def test_second_qat_student_from_the_same_teacher_trains_every_weight(vit: nn.Module, data) -> None:  # noqa: ANN001
    vit.train()  # whatever mode the caller left it in must survive
    before = state(vit)
    for run in range(2):
        student, _ = quantized_copy(vit, QATConfig(**parse_bits("ternary")))
        assert all(p.requires_grad for p in student.parameters()), f"run {run}: the fresh student has frozen weights"
        student.teacher_for_test = vit
        assert weights_that_did_not_move(student, 3, data) == [], f"run {run}"
        assert_unchanged(vit, before)


def test_quantized_copy_of_a_frozen_model_is_trainable(vit: nn.Module) -> None:
    vit.requires_grad_(False)  # a caller may hand over a frozen model; the student is ours and must train
    student, _ = quantized_copy(vit, QATConfig(**parse_bits("w4a8")))
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in vit.parameters())


def test_train_student_leaves_the_teacher_unchanged(vit: nn.Module, data) -> None:  # noqa: ANN001
    from edgekd.kd.trainer import train_student

    before = state(vit)
    for run in range(2):
        torch.manual_seed(run)
        student = build_model("resnet-xs", 1, 10)
        init = {n: p.detach().clone() for n, p in student.named_parameters()}
        train_student(vit, student, data, DistillConfig(epochs=1, batch_size=64, lr=0.01, augment=True))
        moved = [n for n, p in student.named_parameters() if not torch.equal(init[n], p.detach())]
        assert len(moved) == len(init), f"run {run}: {len(init) - len(moved)} student tensors did not train"
        assert_unchanged(vit, before)


def test_synthesize_leaves_the_teacher_unchanged_and_a_later_student_trains(data) -> None:  # noqa: ANN001
    from edgekd.data.synth import synthesize

    teacher = load_model(REPO / "examples" / "fmnist_teacher.state_dict.pt", arch="resnet-l").module
    before = state(teacher)
    res = synthesize(teacher, 8, (1, 28, 28), 10, method="deepinversion", seed=0, iterations=2, batch_size=8)
    assert res.x.shape == (8, 1, 28, 28)
    assert_unchanged(teacher, before)
    assert all(p.is_contiguous() for p in teacher.parameters()), "channels-last layout leaked into the caller's model"
    student, _ = quantized_copy(teacher, QATConfig(**parse_bits("w4a8")))
    student.teacher_for_test = teacher
    assert weights_that_did_not_move(student, 2, data) == []


def test_dfad_leaves_the_teacher_unchanged(vit: nn.Module) -> None:
    from edgekd.data.synth.dfad import train_dfad
    from edgekd.data.synth.presets import get_preset

    before = state(vit)
    student = build_model("resnet-xs", 1, 10)
    init = {n: p.detach().clone() for n, p in student.named_parameters()}
    train_dfad(vit, student, get_preset("dfad").with_overrides(iterations=2, batch_size=8), (1, 28, 28), student_steps=1)
    assert_unchanged(vit, before)
    assert all(not torch.equal(init[n], p.detach()) for n, p in student.named_parameters() if n.endswith("weight"))


def test_frozen_restores_after_an_error_and_refuses_a_shared_student() -> None:
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    m.train()
    with pytest.raises(RuntimeError), frozen(m, channels_last=True):
        assert not m.training and not any(p.requires_grad for p in m.parameters())
        assert m[0].weight.is_contiguous(memory_format=torch.channels_last)
        raise RuntimeError("boom")
    assert m.training and all(p.requires_grad for p in m.parameters()) and m[0].weight.is_contiguous()
    from edgekd.errors import StageError

    with pytest.raises(StageError, match="shares"):
        check_student(m, m)
