"""Adaptive DeepInversion's student side (Yin et al., "Dreaming to Distill", CVPR 2020, §3.3).

ADI alternates two steps: synthesize a batch with DeepInversion's loss plus a competition term against a student S
that is frozen during synthesis,

    L_ADI(x̂) = L_DI(x̂) + λ_ADI · (1 − JS(softmax(S(x̂)/3), softmax(T(x̂)/3))),

which pushes the new images to where S still disagrees with the teacher T, and then distil S on every image made so
far (this module), so the next batch looks for the disagreements that remain. The images, not this student, are the
product: the pipeline distils its own student on them afterwards.

The KD step is written here rather than borrowed from :func:`edgekd.kd.trainer.train_student` because it runs many
times inside synthesis on a growing in-memory set and must be deterministic for a seed (the trainer draws its
augmentations from numpy's global state and writes checkpoints).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: softmax temperature of the competition term and of the in-between KD (the reference code's T = 3)
TEMPERATURE = 3.0


def default_student(channels: int, num_classes: int, seed: int) -> nn.Module:
    """The small zoo CNN (resnet-xs, initialised from ``seed``) that ADI and DFAD use when the caller gives no student."""
    from edgekd.models.zoo import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model("resnet-xs", channels, num_classes)


def competition_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """1 − JS(P_S, P_T) with P = softmax(logits / 3) clamped to [0.01, 0.99]; minimising it maximises disagreement."""
    from edgekd.data.synth.priors import js_divergence

    return 1.0 - js_divergence(student_logits, teacher_logits, TEMPERATURE)


def distil_on_synthetic(teacher: nn.Module, student: nn.Module, x: torch.Tensor, epochs: int, seed: int,
                        batch_size: int = 128, lr: float = 0.05, max_steps: int | None = None) -> float:
    """``epochs`` of KD of ``student`` on ``x`` (soft targets at T = 3, random ±2 px shifts and flips drawn from a
    seeded generator, SGD with a cosine schedule), stopping after ``max_steps`` steps. Returns the last batch's loss."""
    if epochs <= 0 or len(x) == 0:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = max(1, -(-len(x) // batch_size))
    total = epochs * steps_per_epoch if max_steps is None else min(epochs * steps_per_epoch, max_steps)
    step = 0
    last = float("nan")
    student.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for j in range(0, len(x), batch_size):
            if step >= total:
                break
            xb = x[perm[j : j + batch_size]]
            if len(xb) < 2:  # BatchNorm needs two samples in train mode
                continue
            if xb.dim() == 4:
                oy, ox = torch.randint(-2, 3, (2,), generator=gen).tolist()
                xb = torch.roll(xb, shifts=(oy, ox), dims=(-2, -1))
                flip = torch.rand(len(xb), generator=gen) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
                xb = xb.contiguous(memory_format=torch.channels_last)
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + torch.cos(torch.tensor(torch.pi * step / total)).item())
            with torch.no_grad():
                t = F.softmax(teacher(xb) / TEMPERATURE, 1)
            loss = F.kl_div(F.log_softmax(student(xb) / TEMPERATURE, 1), t, reduction="batchmean") * TEMPERATURE**2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            last = float(loss.detach())
    student.eval()
    return last
