"""Small real models and data for tests (no mocks): a factory module importable as ``helpers:make_net``."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.head = nn.Linear(8 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


def make_net() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def make_student(in_channels: int, num_classes: int) -> nn.Module:
    return TinyNet(in_channels, num_classes)
