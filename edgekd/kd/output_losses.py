"""Distillation of any-output models (the ``outputs`` task): one loss term per output on the packed (B, D) outputs
of :mod:`edgekd.models.heads`, summed with equal weights.

    mse      L_k = mean_{n,j} ((s_nj − t_nj) / σ_j)²      σ_j the teacher's std of dimension j on the training data,
                                                          so every output (and every dimension) weighs alike whatever
                                                          its scale — the normalised regression of logits of Ba &
                                                          Caruana 2014 ("Do deep nets really need to be deep?")
    cosine   L_k = mean_n (1 − cos(s_n, t_n))             for normalised embeddings (the direction is what is used)
    bce      L_k = mean_{n,j} BCE(s_nj, t_nj)             the teacher's probabilities as soft targets (multi-label)

The default per output follows its kind (real → mse, unit_norm → cosine, probability → bce); ``distill.output_loss``
overrides it by output name.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from edgekd.errors import ConfigError
from edgekd.kd.losses import LogitLoss

DEFAULT_LOSS = {"real": "mse", "unit_norm": "cosine", "probability": "bce"}
OUTPUT_LOSSES = ("mse", "cosine", "bce")


def output_loss_names(layout: list[dict[str, Any]], overrides: dict[str, str]) -> dict[str, str]:
    """The loss of every output: the user's choice by name, else the default for its kind."""
    names = {o["name"] for o in layout}
    for k, v in overrides.items():
        if k not in names:
            raise ConfigError(f"distill.output_loss names output {k!r}, which the model does not have",
                              f"use one of: {', '.join(sorted(names))}")
        if v not in OUTPUT_LOSSES:
            raise ConfigError(f"distill.output_loss: unknown loss {v!r} for {k}", f"use one of: {', '.join(OUTPUT_LOSSES)}")
    return {o["name"]: overrides.get(o["name"], DEFAULT_LOSS[o.get("kind", "real")]) for o in layout}


class OutputsKD(LogitLoss):
    """Σ_k L_k over the outputs of ``layout`` (see the module docstring); no label term (``ce_weight = 0``)."""

    ce_weight = 0.0

    def __init__(self, layout: list[dict[str, Any]], losses: dict[str, str], teacher_std: torch.Tensor) -> None:
        super().__init__()
        self.slices: list[tuple[str, int, int, str]] = []
        start = 0
        for o in layout:
            d = 1
            for s in o["shape"]:
                d *= int(s)
            self.slices.append((o["name"], start, start + d, losses[o["name"]]))
            start += d
        self.register_buffer("std", teacher_std.float().reshape(-1).clamp_min(1e-6))

    def forward(self, zs: torch.Tensor, zt: torch.Tensor, y: torch.Tensor, progress: float = 1.0) -> torch.Tensor:
        total = zs.new_zeros(())
        for _name, a, b, kind in self.slices:
            s, t = zs[:, a:b], zt[:, a:b]
            if kind == "mse":
                total = total + (((s - t) / self.std[a:b]) ** 2).mean()
            elif kind == "cosine":
                total = total + (1 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()
            else:
                total = total + F.binary_cross_entropy(s.clamp(1e-6, 1 - 1e-6), t.clamp(0.0, 1.0))
        return total
