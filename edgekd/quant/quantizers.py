"""Fake-quantizers for quantization-aware training: LSQ, PACT and TWN (ternary).

Each quantizer is an ``nn.Module`` mapping a float tensor to its fake-quantized value, with a straight-through
estimator (STE) for the rounding. ``export_mode`` switches them to ``torch.fake_quantize_per_{tensor,channel}_affine``
on the int8 grid, which the ONNX exporter writes as QuantizeLinear/DequantizeLinear (symmetric, zero-point 0,
per-channel weights on axis 0 — the form TensorRT builds explicit INT8 from). Weights are trained on the narrow
range [−127, 127]; the exported Q/DQ declares the full int8 range because the TorchScript exporter accepts only
that, and the stored integers never reach −128, so the narrow-range contract holds. Sub-8-bit values are multiples of the
same step inside the int8 range, so the int8 Q/DQ holds them exactly (lossless): ternary {−α, 0, α} is {−1, 0, 1}·α.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return (x.round() - x).detach() + x


def as_constant(t: torch.Tensor) -> torch.Tensor:
    """A copy with no link to parameters, so the ONNX tracer records it as a constant (and we can fold it to int8)."""
    return torch.from_numpy(t.detach().cpu().numpy().copy())


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x forward, g·∂L/∂x backward (LSQ's step-size gradient scaling)."""
    return (x - x * g).detach() + x * g


class FakeQuantizer(nn.Module):
    """Base: ``bits``, ``signed``, and the export switch."""

    export_mode: bool = False

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("initialized", torch.tensor(False))

    def freeze_weight(self, w: torch.Tensor | None) -> None:
        """Export: keep the quantized weight as a (non-persistent) buffer, so the tracer records it as an initializer
        feeding QuantizeLinear (a plain tensor would be folded into a float constant, losing the Q/DQ pair)."""
        if w is None:
            if hasattr(self, "export_weight"):
                del self._buffers["export_weight"]
            return
        with torch.no_grad():
            self.register_buffer("export_weight", self.quantized_weight(w).detach().clone(), persistent=False)

    def quantized_weight(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def int8_range(self, signed: bool) -> tuple[int, int]:
        return (-128, 127) if signed else (0, 255)

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class LSQ(FakeQuantizer):
    """Esser et al. 2020, "Learned Step Size Quantization" (ICLR).

        v̂ = round(clamp(v / s, −Q_N, Q_P)) · s,      s learnable, gradient scaled by g = 1/√(N·Q_P)
        s₀ = 2·mean|v| / √Q_P

    ∂v̂/∂s = −v/s + round(v/s) inside the range, −Q_N below it, Q_P above it (STE through the rounding).
    Weights: per output channel (axis 0), signed narrow range (Q_N = Q_P = 2^(b−1) − 1, TensorRT's [−127, 127] at 8
    bits). Activations: one step per tensor, signed (Q_N = 2^(b−1)) or unsigned (Q_N = 0, Q_P = 2^b − 1), chosen at
    initialisation from the sign of the first batch.
    """

    def __init__(self, bits: int, per_channel: bool = False, weight: bool = False) -> None:
        super().__init__(bits)
        self.per_channel, self.weight = per_channel, weight
        self.step = nn.Parameter(torch.ones(1))
        self.register_buffer("signed", torch.tensor(True))

    def qrange(self) -> tuple[int, int]:
        b = self.bits
        if self.weight:
            return -(2 ** (b - 1) - 1), 2 ** (b - 1) - 1
        if bool(self.signed):
            return -(2 ** (b - 1)), 2 ** (b - 1) - 1
        return 0, 2**b - 1

    @torch.no_grad()
    def _init(self, x: torch.Tensor) -> None:
        if not self.weight:
            self.signed.fill_(bool(x.min() < 0))
        qp = self.qrange()[1]
        if self.per_channel:
            s = 2 * x.abs().flatten(1).mean(1) / math.sqrt(qp)
        else:
            s = (2 * x.abs().mean() / math.sqrt(qp)).reshape(1)
        self.step.data = s.clamp_min(1e-8).to(x.dtype)
        self.initialized.fill_(True)

    def _shape(self, x: torch.Tensor) -> torch.Tensor:
        return self.step.view(-1, *([1] * (x.ndim - 1))) if self.per_channel else self.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self._init(x)
        qn, qp = self.qrange()
        if self.export_mode:
            return self._export(x, qn, qp)
        n = x[0].numel() if (self.per_channel or not self.weight) else x.numel()
        g = 1.0 / math.sqrt(max(1, n) * qp)
        s = self._shape(x)
        s = grad_scale(s, g)
        return round_ste(torch.clamp(x / s, qn, qp)) * s

    def _export(self, x: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
        s = self.step.detach().abs().clamp_min(1e-8)
        if self.weight:
            # the weight on the layer's own grid (frozen buffer); the graph gets Q/DQ on the int8 grid
            wq = self.export_weight if hasattr(self, "export_weight") else self.quantized_weight(x)
            s = as_constant(s)
            zp = torch.zeros(s.numel(), dtype=torch.int32)
            if self.per_channel:
                return torch.fake_quantize_per_channel_affine(wq, s.float(), zp, 0, -128, 127)
            return torch.fake_quantize_per_tensor_affine(wq, float(s), 0, -128, 127)
        lo, hi = self.int8_range(bool(self.signed))
        x = torch.clamp(x, qn * float(s), qp * float(s))  # the sub-8-bit range, exactly as in training
        return torch.fake_quantize_per_tensor_affine(x, float(s), 0, lo, hi)

    def quantized_weight(self, w: torch.Tensor) -> torch.Tensor:
        qn, qp = self.qrange()
        sv = self._shape(w).detach().abs().clamp_min(1e-8)
        return torch.round(torch.clamp(w / sv, qn, qp)) * sv

    def scale(self) -> torch.Tensor:
        return self.step.detach().abs()


class PACT(FakeQuantizer):
    """Choi et al. 2018, "PACT: Parameterized Clipping Activation for Quantized Neural Networks".

        y = clamp(x, 0, α);   y_q = round(y · (2^b − 1)/α) · α/(2^b − 1)
        ∂y_q/∂α = 1 if x ≥ α else 0  (STE);   regulariser λ_α·α²

    PACT bounds non-negative (post-ReLU) activations; clamping a signed input (a normalised image, a residual sum, a
    GELU output) at 0 destroys it (issue #14: W8A8 PACT before training gave 10–16 % top-1 on the example teachers).
    So the sign is decided from the first batch, as for LSQ activations: a tensor with negative values gets the
    symmetric, signed variant

        y = clamp(x, −α, α);   y_q = round(y · (2^(b−1) − 1)/α) · α/(2^(b−1) − 1)
        ∂y_q/∂α = 1 if x ≥ α, −1 if x ≤ −α, else 0

    exported as int8 Q/DQ with zero-point 0; the unsigned form exports as uint8 Q/DQ with zero-point 0.
    α initialisation: the 99.9th percentile of |x| over the first batch (at most 100k values), not the paper's fixed
    10, which on small-range activations wastes most of the grid before training has moved α.
    """

    def __init__(self, bits: int, alpha: float = 10.0, l2: float = 1e-4) -> None:
        super().__init__(bits)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.l2 = l2
        self.register_buffer("signed", torch.tensor(False))

    def levels(self) -> int:
        """Positive grid levels: 2^b − 1 unsigned, 2^(b−1) − 1 signed (symmetric, narrow range)."""
        return 2 ** (self.bits - 1) - 1 if bool(self.signed) else 2**self.bits - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            with torch.no_grad():
                flat = x.detach().flatten().float()[:100000]
                self.signed.fill_(bool(flat.min() < 0))
                self.alpha.fill_(float(torch.quantile(flat.abs(), 0.999).clamp_min(1e-3)))
            self.initialized.fill_(True)
        n = self.levels()
        a = self.alpha.abs() + 1e-8
        signed = bool(self.signed)
        if self.export_mode:
            ad = float(a.detach())
            lo, hi = self.int8_range(signed)
            return torch.fake_quantize_per_tensor_affine(torch.clamp(x, -ad if signed else 0.0, ad), ad / n, 0, lo, hi)
        if signed:
            y = torch.where(x >= a, a, torch.where(x <= -a, -a, x))
        else:
            y = torch.where(x >= a, a, torch.relu(x))
        step = (a / n).detach()
        return y + (torch.round(y / step) * step - y).detach()

    def regularization(self) -> torch.Tensor:
        return self.l2 * self.alpha**2

    def scale(self) -> torch.Tensor:
        return (self.alpha.detach().abs() / self.levels()).reshape(1)


class TWN(FakeQuantizer):
    """Li & Liu 2016, "Ternary Weight Networks" (as used by TernaryBERT and Teacher Intervention).

        Δ = 0.7 · mean|W|;   α = mean{|W_ij| : |W_ij| > Δ};   Ŵ = α · sign(W) · 1[|W| > Δ]

    per layer, or per output channel (``per_channel=True``, one Δ and α per row, as TernaryBERT does for the word
    embedding). Backward is the STE (gradient passes unchanged). Exports as int8 Q/DQ with scale α (values −1, 0, 1).
    """

    def __init__(self, per_channel: bool = False) -> None:
        super().__init__(2)
        self.per_channel = per_channel

    def alpha_delta(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = w.detach().abs()
        if self.per_channel:
            a = a.flatten(1)
            delta = 0.7 * a.mean(1, keepdim=True)
            mask = (a > delta).float()
            alpha = (a * mask).sum(1) / mask.sum(1).clamp_min(1)
            return alpha, delta.squeeze(1)
        delta = 0.7 * a.mean()
        mask = (a > delta).float()
        return ((a * mask).sum() / mask.sum().clamp_min(1)).reshape(1), delta.reshape(1)

    def quantized_weight(self, w: torch.Tensor) -> torch.Tensor:
        alpha, delta = self.alpha_delta(w)
        shape = (-1, *([1] * (w.ndim - 1))) if self.per_channel else (1,) * w.ndim
        return alpha.view(shape) * torch.sign(w) * (w.abs() > delta.view(shape)).float()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        alpha, delta = self.alpha_delta(w)
        wq = self.quantized_weight(w)
        if self.export_mode:
            zp = torch.zeros(alpha.numel(), dtype=torch.int32)
            wq = self.export_weight if hasattr(self, "export_weight") else wq.detach()
            alpha = as_constant(alpha)
            if self.per_channel:
                return torch.fake_quantize_per_channel_affine(wq, alpha.float().clamp_min(1e-8), zp, 0, -128, 127)
            return torch.fake_quantize_per_tensor_affine(wq, float(alpha.clamp_min(1e-8)), 0, -128, 127)
        return w + (wq - w).detach()

    def scale(self) -> torch.Tensor:
        return torch.ones(1)
