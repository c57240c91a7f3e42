"""Quantization-aware training: ``quantize_(model, QATConfig(...))`` inserts fake-quantizers in place.

One verb, a config (torchao style): the config names the weight and activation quantizers and bit widths, which
module types get them (Conv, Linear, and the attention matmuls of models that expose them as :class:`MatMul`
modules), the policy for the first and last layers, and module paths kept in floating point. Module paths do not
change — a quantized ``layer1.0.conv1`` is still ``layer1.0.conv1`` — so feature hooks, Teacher Intervention and
state_dicts line up between the FP teacher and its quantized copy.

BatchNorm that directly follows a convolution inside an ``nn.Sequential`` is folded into it first
(:func:`fold_batchnorm`): the quantizer then sees the weights that will run, and the exported graph is
DQ→Conv→Q, which every runtime fuses into an int8 convolution.
"""

from __future__ import annotations

import copy
import re
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgekd.kd.features import get_module
from edgekd.models.freeze import trainable
from edgekd.models.layers import MatMul
from edgekd.errors import UsageError
from edgekd.quant.quantizers import LSQ, PACT, TWN, FakeQuantizer


class QATConfig(BaseModel):
    """What to quantize and how. ``bits="w4a8"`` style strings are parsed by :func:`parse_bits`."""

    model_config = ConfigDict(extra="forbid")
    weight_bits: int = Field(8, ge=2, le=8)
    act_bits: int = Field(8, ge=2, le=8)
    weight_quantizer: Literal["lsq", "twn"] = "lsq"
    act_quantizer: Literal["lsq", "pact"] = "lsq"
    per_channel: bool = True
    modules: list[Literal["conv", "linear", "matmul"]] = Field(default_factory=lambda: ["conv", "linear", "matmul"])
    first_last: Literal["8bit", "fp", "same"] = "8bit"
    keep_fp: list[str] = Field(default_factory=list, description="module paths (or regexes) left in floating point")
    fold_bn: bool = True
    ternary_scale: Literal["row", "layer"] = Field("row", description="TWN: one (Δ, α) per output row, or per layer "
                                                                     "as TernaryBERT ternarizes its linear layers")


def parse_bits(text: str) -> dict[str, object]:
    """``w8a8`` / ``w4a8`` / ``w2a8`` / ``ternary`` → QATConfig fields."""
    t = text.lower().strip()
    if t in ("ternary", "twn", "w2a8-ternary"):
        return {"weight_bits": 2, "act_bits": 8, "weight_quantizer": "twn"}
    m = re.fullmatch(r"w(\d)a(\d)", t)
    if not m:
        raise UsageError(f"bad --bits {text!r}", "use w8a8, w4a8, w2a8 or ternary")
    wb, ab = int(m.group(1)), int(m.group(2))
    return {"weight_bits": wb, "act_bits": ab, "weight_quantizer": "twn" if wb == 2 else "lsq"}


class _FakeQuantLayer:
    """Shared by QConv2d and QLinear: ``weight_fake_quant`` and ``input_fake_quant`` (either may be None)."""

    weight: torch.Tensor
    weight_fake_quant: FakeQuantizer | None
    input_fake_quant: FakeQuantizer | None

    def qweight(self) -> torch.Tensor:
        return self.weight_fake_quant(self.weight) if self.weight_fake_quant is not None else self.weight

    def qinput(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_fake_quant(x) if self.input_fake_quant is not None else x


class QConv2d(_FakeQuantLayer, nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.qinput(x), self.qweight(), self.bias)


class QLinear(_FakeQuantLayer, nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.qinput(x), self.qweight(), self.bias)


class QMatMul(MatMul):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_fake_quant(a) @ self.b_fake_quant(b)  # type: ignore[attr-defined]


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold ``Conv2d → BatchNorm2d`` pairs that sit next to each other in an ``nn.Sequential``; returns the count.

        W' = W · γ/√(σ²+ε),   b' = (b − μ) · γ/√(σ²+ε) + β

    Only adjacent pairs in a Sequential are folded: that order is certain there, while a BN reached through arbitrary
    forward code might not follow the conv it sits beside. Unfolded BNs stay as float layers.
    """
    count = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                inv = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(inv.view(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                new_bias = (bias - bn.running_mean) * inv + bn.bias
                conv.bias = nn.Parameter(new_bias)
                seq._modules[b] = nn.Identity()
                count += 1
    return count


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, MatMul):
        return "matmul"
    return None


def _wq(cfg: QATConfig, bits: int) -> FakeQuantizer:
    if cfg.weight_quantizer == "twn" and bits == 2:
        return TWN(per_channel=cfg.ternary_scale == "row")
    return LSQ(bits, per_channel=cfg.per_channel, weight=True)


def _aq(cfg: QATConfig, bits: int) -> FakeQuantizer:
    return PACT(bits) if cfg.act_quantizer == "pact" else LSQ(bits)


def _kept(path: str, keep: list[str]) -> bool:
    return any(path == k or path.startswith(k + ".") or re.fullmatch(k, path) for k in keep)


def quantize_(model: nn.Module, cfg: QATConfig) -> dict[str, dict[str, object]]:
    """Insert fake-quantizers in place; returns a plan {path: {kind, weight_bits, act_bits}} for the report."""
    for k in cfg.keep_fp:
        if not any(ch in k for ch in "*[]()+?\\") :
            get_module(model, k)  # unknown paths are an error, with close matches
    if cfg.fold_bn:
        fold_batchnorm(model)
    targets = [(n, m) for n, m in model.named_modules() if _kind(m) in cfg.modules and n]
    if not targets:
        raise UsageError("no Conv2d, Linear or MatMul modules to quantize in the model", "check --qat-modules")
    first, last = targets[0][0], targets[-1][0]
    plan: dict[str, dict[str, object]] = {}
    for path, m in targets:
        if _kept(path, cfg.keep_fp):
            plan[path] = {"kind": _kind(m), "weight_bits": 32, "act_bits": 32}
            continue
        wb, ab = cfg.weight_bits, cfg.act_bits
        if path in (first, last):
            if cfg.first_last == "fp":
                plan[path] = {"kind": _kind(m), "weight_bits": 32, "act_bits": 32}
                continue
            if cfg.first_last == "8bit":
                wb, ab = 8, 8
        kind = _kind(m)
        if kind == "conv":
            m.__class__ = QConv2d
        elif kind == "linear":
            m.__class__ = QLinear
        else:
            m.__class__ = QMatMul
            m.a_fake_quant = _aq(cfg, ab) if cfg.act_quantizer != "pact" else LSQ(ab)  # matmul inputs are signed
            m.b_fake_quant = LSQ(ab)
            plan[path] = {"kind": kind, "weight_bits": None, "act_bits": ab}
            continue
        m.weight_fake_quant = _wq(cfg, wb) if wb < 32 else None
        if wb == 8 and isinstance(m.weight_fake_quant, TWN):
            m.weight_fake_quant = LSQ(8, per_channel=cfg.per_channel, weight=True)
        m.input_fake_quant = _aq(cfg, ab)
        plan[path] = {"kind": kind, "weight_bits": wb, "act_bits": ab,
                      "weight_quantizer": type(m.weight_fake_quant).__name__, "act_quantizer": type(m.input_fake_quant).__name__}
    return plan


def quantized_copy(teacher: nn.Module, cfg: QATConfig) -> tuple[nn.Module, dict[str, dict[str, object]]]:
    """A fake-quantized copy of ``teacher`` (which is left unchanged), every parameter trainable even when the
    teacher's are frozen; returns (student, plan)."""
    student = trainable(copy.deepcopy(teacher))
    plan = quantize_(student, cfg)
    return student, plan


def set_export_mode(model: nn.Module, on: bool = True) -> None:
    """Switch every quantizer to (or from) its ONNX Q/DQ form; weights are frozen on their grid while on."""
    for m in model.modules():
        if isinstance(m, FakeQuantizer):
            m.export_mode = on
        if isinstance(m, (QConv2d, QLinear)) and getattr(m, "weight_fake_quant", None) is not None:
            m.weight_fake_quant.freeze_weight(m.weight if on else None)


def regularization(model: nn.Module) -> torch.Tensor:
    terms = [m.regularization() for m in model.modules() if isinstance(m, PACT)]
    return torch.stack(terms).sum() if terms else torch.zeros(())

