"""Small building blocks shared by the zoo and the quantization code."""

from __future__ import annotations

import torch
from torch import nn


class MatMul(nn.Module):
    """``a @ b`` as a module, so attention matmuls can be found by type, quantized and hooked by module path."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a @ b
