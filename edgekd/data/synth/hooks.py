"""Forward hooks the synthesis methods share: BatchNorm input statistics and Genie's swing convolution.

Everything is attached with hooks and removed afterwards, so any torch model works unchanged (no module surgery).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BatchNorm layers that carry running statistics, in definition order.

    Found by their own ``running_mean``/``running_var`` buffers rather than by class, so the BatchNorm nodes of a
    ``torch.export`` program (loaded unflattened: one ``InterpreterModule`` per original module) count too."""
    out = []
    for n, m in model.named_modules():
        b = dict(m.named_buffers(recurse=False))
        if b.get("running_mean") is not None and b.get("running_var") is not None:
            out.append((n, m))
    return out


def conv_stride(m: nn.Module) -> tuple[int, ...] | None:
    """The stride of a 2-D convolution module: an ``nn.Conv2d``, or an exported-program submodule whose graph is one
    ``aten.conv2d`` call. None for anything else."""
    if isinstance(m, nn.Conv2d):
        return tuple(m.stride)
    graph = getattr(m, "graph", None)
    if graph is None or not hasattr(graph, "nodes"):
        return None
    convs = [n for n in graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    if len(convs) != 1:
        return None
    args = convs[0].args
    stride = args[3] if len(args) > 3 else convs[0].kwargs.get("stride", [1, 1])
    return tuple(stride) if isinstance(stride, (list, tuple)) else (int(stride),) * 2


Stat = Literal["batch", "per_sample"]


class BNStatsHook:
    """Collects, for every BN layer, the statistics of its **input** on the current forward pass.

    ``batch``: μ̂ = mean over (B, H, W), σ̂² = var over (B, H, W) (DeepInversion, GDFQ, Genie).
    ``per_sample``: m = mean over (H, W) per sample, s² = var over (H, W) per sample, shape (B, C) (ZeroQ).
    The running statistics (μ, σ²) are the targets. Statistics are kept with their graph so a loss can flow back.
    """

    def __init__(self, model: nn.Module, stat: Stat = "batch") -> None:
        self.layers = bn_layers(model)
        self.stat = stat
        self.means: list[torch.Tensor] = []
        self.vars: list[torch.Tensor] = []
        self._handles = [m.register_forward_pre_hook(self._hook) for _, m in self.layers]
        self._index = {id(m): i for i, (_, m) in enumerate(self.layers)}
        self._order: list[int] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        if x.dim() == 2:
            x = x[:, :, None]
        else:
            x = x.flatten(2)  # (B, C, L)
        if self.stat == "batch":
            mean = x.mean(dim=(0, 2))
            var = x.permute(1, 0, 2).flatten(1).var(dim=1, unbiased=False)
        else:
            mean = x.mean(dim=2)
            var = x.var(dim=2, unbiased=False)
        self.means.append(mean)
        self.vars.append(var)
        self._order.append(self._index[id(module)])

    def reset(self) -> None:
        self.means, self.vars, self._order = [], [], []

    def targets(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(μ̂ or m, σ̂² or s², running_mean μ, running_var σ²) per BN call of the last forward, in call order."""
        for i, mean, var in zip(self._order, self.means, self.vars):
            bn = self.layers[i][1]
            yield mean, var, bn.running_mean.detach(), bn.running_var.detach()

    def called_layers(self) -> list[str]:
        """Names of the BN layers of the last forward pass, in the order of :meth:`targets`."""
        return [self.layers[i][0] for i in self._order]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextlib.contextmanager
def bn_stats(model: nn.Module, stat: Stat = "batch") -> Iterator[BNStatsHook]:
    hook = BNStatsHook(model, stat)
    try:
        yield hook
    finally:
        hook.remove()


@contextlib.contextmanager
def swing_convolution(model: nn.Module, generator: torch.Generator | None = None) -> Iterator[int]:
    """Genie's swing convolution (Jeon et al., CVPR 2023): every conv with stride ≠ 1 sees its input reflect-padded
    by 1 and randomly cropped back to the original size (a 0..2 px shift in x and y, re-drawn each forward), which
    suppresses the checkerboard/aliasing artifacts strided convs put into inverted images. Yields the count wrapped.
    """

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        h, w = x.shape[-2:]
        if h < 2 or w < 2:
            return inputs
        xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
        dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
        return (xp[..., dy : dy + h, dx : dx + w],) + tuple(inputs[1:])

    handles = []
    for m in model.modules():
        st = conv_stride(m)
        if st is not None and any(v != 1 for v in st):
            handles.append(m.register_forward_pre_hook(hook))
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
