"""The distillation objective: one general loss, with plain KD as the case of no feature pairs.

    L = w_ce · CE(z_S, y) + L_logit(z_S, z_T, y) + Σ_pairs w_p · MSE(r_p(F_S,p), F_T,p)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.kd.features import FeatureKD
from edgekd.kd.losses import LogitLoss


class DistillObjective(nn.Module):
    def __init__(self, logit_loss: LogitLoss, ce_weight: float | None = None, feature_kd: FeatureKD | None = None) -> None:
        super().__init__()
        self.logit_loss = logit_loss
        self.ce_weight = logit_loss.ce_weight if ce_weight is None else ce_weight
        self.feature_kd = feature_kd

    def forward(self, zs: torch.Tensor, zt: torch.Tensor | None, y: torch.Tensor, progress: float = 1.0,
                s_feats: dict[str, torch.Tensor] | None = None,
                t_feats: dict[str, torch.Tensor] | None = None,
                y_soft: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``progress`` is the fraction of the run done (0 → 1; losses with a warm-up ramp on it); ``y_soft`` (B×C
        probabilities, e.g. mixup's mixed one-hot) replaces ``y`` in the cross-entropy term."""
        parts: dict[str, torch.Tensor] = {}
        if self.ce_weight:
            parts["ce"] = self.ce_weight * F.cross_entropy(zs, y if y_soft is None else y_soft)
        if zt is not None:
            parts["logit"] = self.logit_loss(zs, zt, y, progress)
        if self.feature_kd is not None and s_feats is not None and t_feats is not None:
            parts["feature"] = self.feature_kd(s_feats, t_feats)
        total = sum(parts.values())  # type: ignore[arg-type]
        return total, {k: float(v.detach()) for k, v in parts.items()}  # type: ignore[return-value]
