"""Knowledge-distillation losses, registered by name.

Each logit loss returns only its distillation term; :class:`edgekd.kd.objective.DistillObjective` adds the
task cross-entropy (weight ``ce_weight``) and any feature terms. Notation: z_S, z_T student/teacher logits,
p^τ = softmax(z/τ), y the label, B the batch size, C the number of classes; KL is averaged over the batch.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import ConfigError
from edgekd.registry import Registry

LOSSES: Registry[type["LogitLoss"]] = Registry("loss")


class LogitLoss(nn.Module):
    """Base class; subclasses set the recommended ``ce_weight`` paired with them."""

    ce_weight: float = 1.0

    def forward(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        raise NotImplementedError


def kl_batchmean(log_q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = Σ_c p_c (log p_c − log q_c), summed over classes and averaged over the batch."""
    return (p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum(1).mean()


@LOSSES.register("ce")
class NoDistillation(LogitLoss):
    """Labels only: L = CE(z_S, y). The baseline that every KD loss must beat."""

    ce_weight = 1.0

    def forward(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        return zs.new_zeros(())


@LOSSES.register("kd")
class HintonKD(LogitLoss):
    """Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network".

        L_kd = τ² · KL(p_T^τ ‖ p_S^τ)

    The τ² factor keeps the gradient magnitude independent of τ (∂L/∂z_S = τ (p_S^τ − p_T^τ)).
    Total with the objective's defaults: L = 0.1·CE + 0.9·L_kd (mdistiller's CIFAR-100 setting, τ = 4).
    """

    ce_weight = 0.1

    def __init__(self, temperature: float = 4.0, weight: float = 0.9) -> None:
        super().__init__()
        self.t, self.weight = temperature, weight

    def forward(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        t = self.t
        return self.weight * t * t * kl_batchmean(F.log_softmax(zs / t, 1), F.softmax(zt / t, 1))


@LOSSES.register("dkd")
class DecoupledKD(LogitLoss):
    """Zhao et al. 2022, "Decoupled Knowledge Distillation" (CVPR).

        b = [p_y, 1 − p_y]  at τ (target vs all non-target mass)
        p̂ = softmax over the non-target classes at τ
        TCKD = KL(b_T ‖ b_S),  NCKD = KL(p̂_T ‖ p̂_S)
        L_dkd = min(progress / warmup, 1) · τ² · (α·TCKD + β·NCKD)

    ``progress`` is the fraction of the run done (0 → 1), so the warm-up scales with the run length. Defaults α = 1,
    β = 8, τ = 4, warm-up 1/12 of the run (mdistiller's 20 of 240 CIFAR-100 epochs). An absolute warm-up in epochs
    would never reach full weight in a run shorter than it (issue #14: 20 warm-up epochs against 10 of distillation).
    """

    ce_weight = 1.0

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup: float = 20 / 240) -> None:
        super().__init__()
        if not 0 <= warmup <= 1:
            raise ConfigError(f"dkd warmup {warmup} is not a fraction of the run",
                              "set distill.loss_params.warmup between 0 and 1 (default 1/12)")
        self.alpha, self.beta, self.t, self.warmup = alpha, beta, temperature, warmup

    def parts(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(TCKD, NCKD) without τ² or weights."""
        t = self.t
        gt = F.one_hot(y, zs.shape[1]).bool()
        ps, pt = F.softmax(zs / t, 1), F.softmax(zt / t, 1)
        bs = torch.stack([(ps * gt).sum(1), (ps * ~gt).sum(1)], 1)
        bt = torch.stack([(pt * gt).sum(1), (pt * ~gt).sum(1)], 1)
        tckd = kl_batchmean(torch.log(bs.clamp_min(1e-12)), bt)
        # Mask the target logit with a large negative value (mdistiller uses −1000) before the softmax.
        log_ps_nt = F.log_softmax(zs / t - 1000.0 * gt, 1)
        pt_nt = F.softmax(zt / t - 1000.0 * gt, 1)
        nckd = kl_batchmean(log_ps_nt, pt_nt)
        return tckd, nckd

    def forward(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        tckd, nckd = self.parts(zs, zt, y)
        ramp = min(progress / self.warmup, 1.0) if self.warmup > 0 else 1.0
        return ramp * self.t**2 * (self.alpha * tckd + self.beta * nckd)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@LOSSES.register("dist")
class DIST(LogitLoss):
    """Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (NeurIPS).

        Y = softmax(z / τ)
        inter = 1 − (1/B) Σ_i ρ(Y_S[i,:], Y_T[i,:])      (relation between classes, per sample)
        intra = 1 − (1/C) Σ_j ρ(Y_S[:,j], Y_T[:,j])      (relation between samples, per class)
        L_dist = τ² (β·inter + γ·intra)

    ρ is the Pearson correlation. Defaults β = γ = 1, τ = 1 (ImageNet); it is 0 when the logits are equal.
    """

    ce_weight = 1.0

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> None:
        super().__init__()
        self.beta, self.gamma, self.t = beta, gamma, temperature

    def forward(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        ys, yt = F.softmax(zs / self.t, 1), F.softmax(zt / self.t, 1)
        inter = 1 - _pearson_rows(ys, yt).mean()
        intra = 1 - _pearson_rows(ys.t(), yt.t()).mean()
        return self.t**2 * (self.beta * inter + self.gamma * intra)


@LOSSES.register("nkd")
class NormalizedKD(LogitLoss):
    """Yang et al. 2023, "From Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with
    Normalized Loss and Customized Soft Labels" (ICCV), the NKD part.

        L_t = −(1/B) Σ_i p_T[i, y_i] · log p_S[i, y_i]                         (τ = 1)
        L_n = −γ τ² (1/B) Σ_i Σ_{j≠y_i} T̂_ij log Ŝ_ij,   T̂, Ŝ = softmax over non-target logits at τ
        L_nkd = L_t + L_n

    Normalising the non-target distributions makes their sums equal, so the student can match them exactly.
    Defaults τ = 1, γ = 1.5 (ImageNet, yzd-v/cls_KD).
    """

    ce_weight = 1.0

    def __init__(self, temperature: float = 1.0, gamma: float = 1.5) -> None:
        super().__init__()
        self.t, self.gamma = temperature, gamma

    def forward(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        idx = y.view(-1, 1)
        log_ps = F.log_softmax(zs, 1)
        pt = F.softmax(zt, 1)
        loss_t = -(pt.gather(1, idx).detach() * log_ps.gather(1, idx)).mean()
        n, c = zs.shape
        mask = torch.ones_like(zs, dtype=torch.bool).scatter_(1, idx, False)
        zs_nt, zt_nt = zs[mask].view(n, c - 1), zt[mask].view(n, c - 1)
        loss_n = (F.softmax(zt_nt / self.t, 1) * F.log_softmax(zs_nt / self.t, 1)).sum(1).mean()
        return loss_t - self.gamma * self.t**2 * loss_n


def build_loss(name: str, **params: float) -> LogitLoss:
    """The registered loss ``name`` with ``params``; unknown parameters and a temperature ≤ 0 are config errors
    (caught when the config is read, before any data is loaded)."""
    cls = LOSSES.get(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"loss {name!r} has no parameter {unknown[0]!r}", f"its parameters: {', '.join(accepted) or 'none'}")
    for k, v in params.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise ConfigError(f"loss parameter {k}={v!r} is not a finite number", "set distill.loss_params to numbers")
    if "temperature" in params and params["temperature"] <= 0:
        raise ConfigError(f"loss temperature must be > 0, got {params['temperature']}", "e.g. distill.loss_params.temperature: 4")
    return cls(**params)
