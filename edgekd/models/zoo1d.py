"""1-D students for models whose input is not an image: audio waveforms, sequences, (C, L) signals (issue #19).

``conv1d-*``: the zoo's ResNet recipe in one dimension (He et al. 2016, basic blocks)::

    stem: conv k × stride s (k = 2s + 1, so that every sample is read) → BN → ReLU
    3 stages of basic residual blocks, widths w, 2w, 4w, strides 1, 2, 2 → global average pool → FC

An ``(N, L)`` input is read as one channel, ``(N, C, L)`` as C. The stem stride (4 for the presets) brings a
1,024-sample waveform to 256 positions before the first block, as the 2-D presets' stride-2 stems do for images:
the widest stage dominates batch-1 latency on small CPUs. Written here because no kept library ships small 1-D
students that export to plain ONNX Conv ops and quantize with ORT and NNCF.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from edgekd.models.zoo import MODELS, ResNet

#: what a zoo entry takes, read by :func:`edgekd.models.zoo.input_kind` (the 2-D families take images)
SEQUENCE = "sequence"


class ResNet1d(ResNet):
    """:class:`edgekd.models.zoo.ResNet` with ``dim=1``; an (N, L) input is read as one channel."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, depth: int = 1, stem_stride: int = 4) -> None:
        super().__init__(in_channels, num_classes, width, depth, stem_stride, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unsqueeze(1) if x.dim() == 2 else x)


PRESETS_1D: dict[str, tuple[int, int, int]] = {  # name: (width, depth, stem stride)
    "conv1d-xs": (8, 1, 4),
    "conv1d-s": (16, 1, 4),
    "conv1d-m": (24, 1, 2),
    "conv1d-l": (32, 2, 2),
}


def _make(width: int, depth: int, stride: int) -> Callable[..., nn.Module]:
    preset = (width, depth, stride)

    def build(in_channels: int, num_classes: int, width: int | None = None, depth: int | None = None,
              stem_stride: int | None = None) -> nn.Module:
        return ResNet1d(in_channels, num_classes, width or preset[0], depth or preset[1], stem_stride or preset[2])

    build.__doc__ = f"conv1d width={width} depth={depth} stem_stride={stride} (inputs (L,) or (C, L))"
    build.input_kind = SEQUENCE  # type: ignore[attr-defined]
    return build


for _name, (_w, _d, _s) in PRESETS_1D.items():
    MODELS.add(_name, _make(_w, _d, _s))
