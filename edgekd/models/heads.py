"""Models whose outputs are any tensors (the ``outputs`` task): one packed view for training and scoring, named
outputs for export, and student heads that reproduce the teacher's output structure.

A model may return a tensor, a tuple/list of tensors or a dict of tensors, each with the batch first. The *layout*
(``info["outputs"]``: name, per-sample shape, kind) fixes their order; *packing* flattens each to (B, d_k) and sets
them side by side, (B, Σ d_k), so that the trainer, the parity checks and the torch-free worker handle one array
whatever the structure (:func:`edgekd.tasks.output_metrics.split_packed` is the inverse).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def output_list(out: Any, names: list[str] | None = None) -> list[torch.Tensor]:
    """A model's outputs as a list in layout order (a dict by ``names``, else insertion order)."""
    if isinstance(out, dict):
        return [out[n] for n in (names or list(out))]
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def pack(out: Any, names: list[str] | None = None) -> torch.Tensor:
    parts = output_list(out, names)
    return torch.cat([p.reshape(p.shape[0], -1).float() for p in parts], 1)


class Packed(nn.Module):
    """``module`` with its outputs packed to one (B, D) tensor."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.module, self.names = module, names

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pack(self.module(x), self.names)


class AsTuple(nn.Module):
    """``module`` returning a tuple in layout order (a dict-output model, for the ONNX exporter's named outputs)."""

    def __init__(self, module: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.module, self.names = module, names

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(output_list(self.module(x), self.names))


class OutputHeads(nn.Module):
    """A backbone with ``Σ d_k`` outputs split into the teacher's outputs, each brought into the teacher's range:

        real         y_k = μ_k + σ_k · z_k      (μ, σ: the teacher's per-dimension mean and std on the training data,
                                                 fixed buffers, so a fresh head starts at the teacher's mean and the
                                                 optimiser works at unit scale)
        probability  y_k = sigmoid(z_k)         (teacher outputs in [0, 1]: multi-label probabilities)
        unit_norm    y_k = z_k / ‖z_k‖          (teacher outputs of norm 1: normalised embeddings)

    Returns a tensor for a single output, else a tuple in layout order (exported with the layout's names)."""

    def __init__(self, backbone: nn.Module, layout: list[dict[str, Any]], center: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.layout = [{"name": o["name"], "shape": list(o["shape"]), "kind": o.get("kind", "real")} for o in layout]
        self.dims = [_numel(o["shape"]) for o in self.layout]
        total = sum(self.dims)
        # buffers: saved with the weights, so a reloaded student needs only the layout
        self.register_buffer("center", torch.zeros(total) if center is None else center.float().reshape(total))
        self.register_buffer("scale", torch.ones(total) if scale is None else scale.float().reshape(total).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> Any:
        z = self.backbone(x)
        z = z.reshape(z.shape[0], -1)
        outs = []
        start = 0
        for o, d in zip(self.layout, self.dims):
            zk = z[:, start : start + d]
            if o["kind"] == "probability":
                yk = torch.sigmoid(zk)
            elif o["kind"] == "unit_norm":
                yk = F.normalize(zk, dim=1)
            else:
                yk = self.center[start : start + d] + self.scale[start : start + d] * zk
            outs.append(yk.reshape((z.shape[0], *o["shape"])))
            start += d
        return outs[0] if len(outs) == 1 else tuple(outs)


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n
