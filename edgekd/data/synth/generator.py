"""The small DCGAN-style generator of GDFQ (Xu et al., ECCV 2020), Genie-D (Jeon et al., CVPR 2023) and DFAD
(Fang et al., 2019):

    Linear(nz → 128·(S/4)²) → BN → Up×2 → Conv3×3 128→128 → BN → LReLU(0.2) → Up×2 → Conv3×3 128→64 → BN → LReLU
    → Conv3×3 64→C → tanh → BN(C, affine=False)

Genie's own generator has one conv fewer (Conv 128→64, then 64→C); ``genie=True`` builds that variant. Sizes that
are not multiples of 4 are generated at the next multiple and centre-cropped (e.g. 30 → 32 → 30).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Generator(nn.Module):
    def __init__(self, nz: int, channels: int, height: int, width: int, genie: bool = False) -> None:
        super().__init__()
        self.h0, self.w0 = math.ceil(height / 4), math.ceil(width / 4)
        self.out_hw = (height, width)
        self.fc = nn.Linear(nz, 128 * self.h0 * self.w0)
        self.bn0 = nn.BatchNorm2d(128)
        if genie:
            body = [nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
                    nn.Upsample(scale_factor=2), nn.Conv2d(64, channels, 3, 1, 1)]
        else:
            body = [nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, 1, 1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
                    nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
                    nn.Conv2d(64, channels, 3, 1, 1)]
        self.body = nn.Sequential(*body, nn.Tanh(), nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.fc(z).view(z.shape[0], 128, self.h0, self.w0))
        x = self.body(x)
        h, w = self.out_hw
        if x.shape[-2:] != (h, w):
            top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
            x = x[..., top : top + h, left : left + w]
        return x
