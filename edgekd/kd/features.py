"""Feature distillation between module paths, reached with forward hooks (no model surgery).

    recorder = FeatureRecorder(model, ["layer2", "layer3.0.conv2"])
    logits = model(x); feats = recorder.pop()     # {"layer2": tensor, ...}

FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): L_feat = λ · MSE(r(F_S), F_T), where the
learned adapter r maps the student feature to the teacher's shape: a 1×1 conv (+BN) for conv maps, a linear layer
for token/vector features, and adaptive average pooling when the spatial sizes differ.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.errors import UsageError


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path``; a clear error with close matches when it does not exist."""
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    close = difflib.get_close_matches(path, [n for n in modules if n], n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "list module paths with: edgekd inspect MODEL"
    raise UsageError(f"module path {path!r} does not exist in {type(model).__name__}", hint)


class FeatureRecorder:
    """Stores the output of each named submodule on every forward pass."""

    def __init__(self, model: nn.Module, paths: list[str]) -> None:
        self.paths = list(paths)
        self.store: dict[str, torch.Tensor] = {}
        self.handles = []
        for p in self.paths:
            mod = get_module(model, p)
            self.handles.append(mod.register_forward_hook(self._hook(p)))

    def _hook(self, path: str):  # noqa: ANN202
        def fn(_mod: nn.Module, _inp: object, out: object) -> None:
            if isinstance(out, (tuple, list)):
                out = out[0]
            self.store[path] = out  # type: ignore[assignment]

        return fn

    def pop(self) -> dict[str, torch.Tensor]:
        out, self.store = self.store, {}
        missing = [p for p in self.paths if p not in out]
        if missing:
            raise UsageError(f"module path(s) {missing} did not run in the forward pass", "pick modules that the forward calls")
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class Adapter(nn.Module):
    """Maps a student feature to the teacher feature's shape (FitNets regressor)."""

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size) -> None:
        super().__init__()
        self.t_shape = tuple(t_shape[1:])
        if len(s_shape) == 4:
            if len(t_shape) != 4:
                raise UsageError(f"cannot pair a conv feature {tuple(s_shape)} with {tuple(t_shape)}", "pair features of the same kind")
            self.proj: nn.Module = nn.Sequential(nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False), nn.BatchNorm2d(t_shape[1]))
        else:
            self.proj = nn.Linear(s_shape[-1], t_shape[-1])

    def forward(self, fs: torch.Tensor, ft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fs = self.proj(fs)
        if fs.ndim == 4 and fs.shape[-2:] != ft.shape[-2:]:
            size = (min(fs.shape[-2], ft.shape[-2]), min(fs.shape[-1], ft.shape[-1]))
            fs, ft = F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)
        elif fs.ndim == 3 and fs.shape[1] != ft.shape[1]:
            n = min(fs.shape[1], ft.shape[1])
            fs = F.adaptive_avg_pool1d(fs.transpose(1, 2), n).transpose(1, 2)
            ft = F.adaptive_avg_pool1d(ft.transpose(1, 2), n).transpose(1, 2)
        return fs, ft


@dataclass
class FeaturePair:
    student: str
    teacher: str
    weight: float = 1.0


class FeatureKD(nn.Module):
    """Σ_pairs w · MSE(adapter(F_S), F_T). Adapters are built from one probe batch, before the optimizer exists."""

    def __init__(self, pairs: list[FeaturePair], s_feats: dict[str, torch.Tensor], t_feats: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.pairs = pairs
        self.adapters = nn.ModuleList(Adapter(s_feats[p.student].shape, t_feats[p.teacher].shape) for p in pairs)

    def forward(self, s_feats: dict[str, torch.Tensor], t_feats: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for pair, ad in zip(self.pairs, self.adapters):
            fs, ft = ad(s_feats[pair.student], t_feats[pair.teacher].detach())
            term = pair.weight * F.mse_loss(fs, ft)
            total = term if total is None else total + term
        assert total is not None
        return total
