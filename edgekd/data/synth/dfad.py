"""DFAD — Data-Free Adversarial Distillation (Fang, Song, Shen, Wang, Song; arXiv 1912.11006).

A generator G and the student S play a min-max game on the teacher T's logits, with no real data and no BatchNorm
statistics (so it works for LayerNorm ViTs and BN-free CNNs):

    student, 5 steps per round on fresh batches:   min_S  ‖S(G(z)) − T(G(z))‖₁      (G detached)
    generator, 1 step per round:                    max_G  ‖S(G(z)) − T(G(z))‖₁

with mean absolute error on logits, the teacher frozen in eval mode and the student in train mode. The ``dfad-bn``
preset adds BN-statistics matching and a class-balance term to the generator's loss (see :func:`train_dfad`). Defaults follow
the reference MNIST recipe (VainF/Data-Free-Adversarial-Distillation ``DFAD_mnist.py``): nz = 100, SGD lr 0.01
momentum 0.9 wd 5e-4 for S, Adam lr 1e-3 for G; a cosine schedule replaces the reference's step schedule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgekd import progress
from edgekd.data.synth.generator import Generator
from edgekd.data.synth.hooks import bn_stats
from edgekd.data.synth.losses import bn_matching_loss
from edgekd.data.synth.presets import SynthPreset
from edgekd.errors import StageError
from edgekd.models.freeze import check_student, frozen


@dataclass
class DFADResult:
    student: nn.Module
    generator: Generator
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def train_dfad(teacher: nn.Module, student: nn.Module, preset: SynthPreset, input_shape: Sequence[int], seed: int = 0, *,
               student_steps: int = 5, desc: str = "dfad", eval_fn: Callable[[nn.Module], float] | None = None,
               eval_every: int = 0) -> DFADResult:
    """Run ``preset.iterations`` rounds of the DFAD game; returns the trained student and generator.

    With a BN preset (``dfad-bn``: ``preset.stat == "batch"``) the generator step also matches the teacher's
    BatchNorm statistics and keeps the classes balanced (Choi et al., CVPR-W 2020):

        L_G = −‖S(x) − T(x)‖₁ + λ_BN·Σ_l (‖μ_l − μ̂_l‖² + ‖σ_l − σ̂_l‖²)/C_l + λ_bal·Σ_k p̄_k log p̄_k,
        p̄ = mean over the batch of softmax(T(x)),   x = G(z)

    (the last term is minus the entropy of the batch's mean class distribution: the generator is pushed to cover
    every class instead of the few the adversarial term finds easiest).
    """
    check_student(student, teacher)
    with frozen(teacher):  # handed back unchanged
        return _train_dfad(teacher, student, preset, input_shape, seed, student_steps, desc, eval_fn, eval_every)


def _train_dfad(teacher: nn.Module, student: nn.Module, preset: SynthPreset, input_shape: Sequence[int], seed: int,
                student_steps: int, desc: str, eval_fn: Callable[[nn.Module], float] | None, eval_every: int) -> DFADResult:
    bn_weight = preset.bn_weight if preset.stat != "none" else 0.0
    balance_weight = preset.balance_weight
    c, h, w = (int(v) for v in input_shape)
    torch.manual_seed(seed)
    G = Generator(preset.nz, c, h, w)
    opt_s = torch.optim.SGD(student.parameters(), lr=preset.lr, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(G.parameters(), lr=preset.lr_generator, betas=preset.betas)
    gen = torch.Generator().manual_seed(seed)
    bs = preset.batch_size
    history: list[dict[str, float]] = []
    t0 = time.time()
    with progress.bar(f"{desc} (dfad)", preset.iterations) as bar:
        for it in range(preset.iterations):
            scale = 0.5 * (1 + math.cos(math.pi * it / preset.iterations))
            for o, base in ((opt_s, preset.lr), (opt_g, preset.lr_generator)):
                for g in o.param_groups:
                    g["lr"] = base * scale
            student.train()
            G.train()
            s_loss = 0.0
            for _ in range(student_steps):
                z = torch.randn(bs, preset.nz, generator=gen)
                with torch.no_grad():
                    x = G(z)
                    t = teacher(x)
                loss_s = F.l1_loss(student(x), t)
                opt_s.zero_grad(set_to_none=True)
                loss_s.backward()
                opt_s.step()
                s_loss = float(loss_s.detach())
            z = torch.randn(bs, preset.nz, generator=gen)
            x = G(z)
            if bn_weight:
                with bn_stats(teacher, "batch") as hook:
                    t = teacher(x)
                    bn_loss, _ = bn_matching_loss(hook, "std-l2sq")
            else:
                t = teacher(x)
                bn_loss = torch.zeros(())
            adv = F.l1_loss(student(x), t)
            loss_g = -adv + bn_weight * bn_loss
            if balance_weight:
                p_mean = F.softmax(t, 1).mean(0)
                loss_g = loss_g + balance_weight * (p_mean * p_mean.clamp_min(1e-8).log()).sum()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if not (math.isfinite(s_loss) and math.isfinite(float(loss_g.detach()))):
                raise StageError(f"DFAD loss became non-finite at round {it}", "lower the learning rates (--synth-lr)")
            rec = {"round": it + 1, "student_l1": s_loss, "generator_l1": float(adv.detach()), "bn_loss": float(bn_loss.detach())}
            if eval_fn is not None and eval_every and ((it + 1) % eval_every == 0 or it + 1 == preset.iterations):
                rec["eval"] = eval_fn(student)
                student.train()
            history.append(rec)
            rate = (it + 1) * bs * (student_steps + 1) / max(time.time() - t0, 1e-9)
            bar.update(1, info=f"L1 {s_loss:.3g}  {rate:.0f} img/s")
    student.eval()
    return DFADResult(student, G, history, time.time() - t0)


def sample_generator(G: Generator, n: int, nz: int, batch_size: int, seed: int) -> torch.Tensor:
    """Draw ``n`` images from a trained generator (BN in train mode, as during the game)."""
    gen = torch.Generator().manual_seed(seed + 1)
    G.train()
    out = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            z = torch.randn(max(b, 2), nz, generator=gen)
            out.append(G(z)[:b])
    return torch.cat(out)


def sample_dfad(teacher: nn.Module, student: nn.Module | None, preset: SynthPreset, n: int, input_shape: Sequence[int],
                num_classes: int, seed: int, desc: str = "dfad") -> tuple[torch.Tensor, dict[str, Any]]:
    """DFAD as a data source: play the game against ``student`` (default: the zoo's ``resnet-xs``) and sample the
    final generator."""
    if student is None:
        from edgekd.data.synth.adi import default_student

        student = default_student(int(input_shape[0]), num_classes, seed)
    res = train_dfad(teacher, student, preset, input_shape, seed, desc=desc)
    x = sample_generator(res.generator, n, preset.nz, preset.batch_size, seed)
    last = res.history[-1] if res.history else {}
    return x, {"rounds": preset.iterations, "final_student_l1": last.get("student_l1"), "final_generator_l1": last.get("generator_l1")}
