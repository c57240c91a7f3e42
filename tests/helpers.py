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


class Regressor(nn.Module):
    """One real-valued output per sample, (B, 1), far from zero (a head regressing e.g. a size in millimetres)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50.0 + 10.0 * self.net(x)


class Embedder(nn.Module):
    """A 16-d L2-normalised embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.net = TinyNet(1, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.net(x), dim=1)


class TwoHeads(nn.Module):
    """A dict of outputs: 5 multi-label probabilities and a 4-d box-like regression."""

    def __init__(self) -> None:
        super().__init__()
        self.features = TinyNet(1, 32)
        self.labels = nn.Linear(32, 5)
        self.box = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.features(x))
        return {"labels": torch.sigmoid(self.labels(h)), "box": self.box(h)}
