"""Use a model the caller owns as a fixed teacher without changing it.

A teacher must run in eval mode with no parameter gradients (inputs may still need gradients: data-free synthesis
optimises the images through it). Flipping ``requires_grad`` on the caller's object is the bug this module exists
to prevent: a student built later from the same object (``copy.deepcopy``, ``quantized_copy``) inherits the frozen
flags and trains only what the freezing missed — every published QAT number of issue #14 was measured that way.

Why a context that puts everything back, not a private deep copy: programs loaded from ``.pt2`` files
(``torch.export.unflatten``) carry symbolic shapes and cannot be deep-copied, and a teacher can be large. Inside
``frozen(m)`` the module is in eval mode with ``requires_grad=False`` on every parameter; on exit, each parameter's
flag, each submodule's ``training`` flag and (with ``channels_last``) each weight's memory layout are restored, so
the caller sees exactly the object it passed in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def frozen(model: nn.Module, *, channels_last: bool = False) -> Iterator[nn.Module]:
    """Within the block ``model`` is in eval mode with frozen parameters (and channels-last 4-D weights when asked:
    oneDNN runs CPU convolutions and their input gradients ~1.5× faster that way); all of it is undone on exit."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    layouts: list[tuple[torch.Tensor, torch.Tensor]] = []
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        if channels_last:
            for p in params:
                if p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                    layouts.append((p, p.data))
                    p.data = p.data.contiguous(memory_format=torch.channels_last)
        yield model
    finally:
        for p, original in layouts:
            p.data = original
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def trainable(model: nn.Module) -> nn.Module:
    """Make every parameter of a model this code created (a student) trainable; returns it. A copy of a frozen
    teacher would otherwise inherit ``requires_grad=False``."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def check_student(student: nn.Module, teacher: nn.Module) -> None:
    """Refuse a student that cannot learn: shares parameters with its teacher, or has nothing trainable."""
    from edgekd.errors import StageError

    shared = {id(p) for p in teacher.parameters()} & {id(p) for p in student.parameters()}
    if shared:
        raise StageError(f"the student shares {len(shared)} parameter tensors with its teacher",
                         "build the student as a copy (edgekd.quant.qat.quantized_copy) or a fresh model")
    if not any(p.requires_grad for p in student.parameters()):
        raise StageError("the student has no trainable parameters", "build it with edgekd.models.freeze.trainable(...)")
