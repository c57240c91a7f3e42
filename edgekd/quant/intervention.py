"""Teacher Intervention (Kim et al., EACL 2023, "Teacher Intervention: Improving Convergence of Quantization Aware
Training for Ultra-Low Precision Transformers"), reached through forward hooks on module paths.

The FP teacher and its quantized copy share module paths, so an intervention point is a path: the teacher's signal
at that path, recorded during the teacher's forward pass, replaces the student's in the student's forward pass.
Where a signal is replaced, the inputs of the sub-layers that produced it are detached, so they learn only from
their local loss and quantization error from them cannot propagate.

Transformers (§1.3 of the spec; one attention module per block, children named by ``AttentionPoints``):

    TI-M  softmax output (attention map) := teacher's;  Q, K inputs detached
    TI-C  per-head context A·V           := teacher's;  Q, K, V inputs detached
    TI-O  attention output projection    := teacher's;  Q, K, V inputs detached (W_O gets no gradient)
    TI-G  O for t < s/6, C for s/6 ≤ t < s/3, M for t ≥ s/3 during step 1 (s steps); step 2: no intervention

CNNs (edgekd's block-wise extension, TI-B; the spec's §1.8): block k receives
m ⊙ sg(h^T_{k−1}) + (1 − m) ⊙ h^S_{k−1}, with m = 1 in phase A, element-wise Bernoulli(p) with p decaying 1 → 0 in
phase B, and m = 0 (plain QAT-KD) in phase C.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from edgekd.errors import UsageError
from edgekd.kd.features import get_module

TI_MODES = ("none", "o", "c", "m")


@dataclass(frozen=True)
class AttentionPoints:
    """Child names inside an attention module (relative paths)."""

    q: str = "q"
    k: str = "k"
    v: str = "v"
    softmax: str = "softmax"
    context: str = "context"
    out: str = "proj"


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _check_same_paths(student: nn.Module, teacher: nn.Module, paths: list[str]) -> None:
    for p in paths:
        get_module(teacher, p)
        get_module(student, p)


class BlockIntervention:
    """TI-B: feed each student block a mix of the teacher's and its own block input. ``p`` is set per step."""

    def __init__(self, student: nn.Module, teacher: nn.Module, blocks: list[str]) -> None:
        if not blocks:
            raise UsageError("Teacher Intervention needs at least one block path", "pass --ti-blocks layer1.0,layer2.0,...")
        _check_same_paths(student, teacher, blocks)
        self.blocks = blocks
        self.p = 0.0
        self.elementwise = False
        self.t_in: dict[str, torch.Tensor] = {}
        self.t_out: dict[str, torch.Tensor] = {}
        self.s_out: dict[str, torch.Tensor] = {}
        self.handles = []
        for b in blocks:
            tm, sm = get_module(teacher, b), get_module(student, b)
            self.handles.append(tm.register_forward_pre_hook(self._rec_in(b)))
            self.handles.append(tm.register_forward_hook(self._rec(self.t_out, b)))
            self.handles.append(sm.register_forward_pre_hook(self._mix(b)))
            self.handles.append(sm.register_forward_hook(self._rec(self.s_out, b)))

    def _rec_in(self, name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            self.t_in[name] = args[0].detach()

        return hook

    def _rec(self, store: dict[str, torch.Tensor], name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            store[name] = _first(out)

        return hook

    def _mix(self, name: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> Any:
            if self.p <= 0 or name not in self.t_in:
                return None
            xs, xt = args[0], self.t_in[name]
            if xs.shape != xt.shape:
                raise UsageError(f"block {name}: student input {tuple(xs.shape)} != teacher input {tuple(xt.shape)}",
                                 "TI needs the student to be a quantized copy of the teacher")
            if self.p >= 1 and not self.elementwise:
                mixed = xt
            else:
                m = (torch.rand_like(xs) < self.p).to(xs.dtype) if self.elementwise else torch.full_like(xs, self.p)
                mixed = m * xt + (1 - m) * xs
            return (mixed, *args[1:])

        return hook

    def clear(self) -> None:
        self.t_in.clear(), self.t_out.clear(), self.s_out.clear()

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class AttentionIntervention:
    """TI-O / TI-C / TI-M on every attention module listed; ``mode`` is set per step ("none" disables)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, attn_paths: list[str], points: AttentionPoints = AttentionPoints()) -> None:
        if not attn_paths:
            raise UsageError("no attention modules given for TI-O/C/M", "pass --ti-blocks with the attention module paths")
        self.paths, self.pt = attn_paths, points
        rel = [points.q, points.k, points.v, points.softmax, points.context, points.out]
        _check_same_paths(student, teacher, [f"{a}.{r}" for a in attn_paths for r in rel])
        self.mode = "none"
        self.teacher_sig: dict[str, torch.Tensor] = {}
        self.t_scores: dict[str, torch.Tensor] = {}
        self.s_scores: dict[str, torch.Tensor] = {}
        self.handles = []
        for a in attn_paths:
            for role, name in (("m", points.softmax), ("c", points.context), ("o", points.out)):
                self.handles.append(get_module(teacher, f"{a}.{name}").register_forward_hook(self._rec_teacher(f"{a}:{role}")))
                self.handles.append(get_module(student, f"{a}.{name}").register_forward_hook(self._replace(f"{a}:{role}", role)))
            # pre-softmax scores (the input of the softmax) for the local attention-score loss
            self.handles.append(get_module(teacher, f"{a}.{points.softmax}").register_forward_pre_hook(self._rec_in(self.t_scores, a)))
            self.handles.append(get_module(student, f"{a}.{points.softmax}").register_forward_pre_hook(self._rec_in(self.s_scores, a)))
            for role, name in (("q", points.q), ("k", points.k), ("v", points.v)):
                self.handles.append(get_module(student, f"{a}.{name}").register_forward_pre_hook(self._detach(role)))

    def _rec_teacher(self, key: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            self.teacher_sig[key] = _first(out).detach()

        return hook

    def _rec_in(self, store: dict[str, torch.Tensor], key: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            store[key] = args[0]

        return hook

    def _replace(self, key: str, role: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> Any:
            if self.mode == role:
                return self.teacher_sig[key]
            return None

        return hook

    def _detach(self, role: str) -> Callable[..., Any]:
        # which inputs are cut, per mode (§1.3 table): M cuts Q,K; C and O cut Q,K,V
        cut = {"m": ("q", "k"), "c": ("q", "k", "v"), "o": ("q", "k", "v")}

        def hook(_m: nn.Module, args: tuple[Any, ...]) -> Any:
            if self.mode in cut and role in cut[self.mode]:
                return (args[0].detach(), *args[1:])
            return None

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def ti_g_mode(t: int, s: int) -> str:
    """The gradual schedule inside step 1: O for t < s/6, C for t < s/3, then M."""
    if t < s / 6:
        return "o"
    if t < s / 3:
        return "c"
    return "m"


def ti_b_p(t: int, s_a: int, s_b: int) -> tuple[float, bool]:
    """TI-B schedule: (p, elementwise). Phase A p=1; phase B p decays linearly 1 → 0 (element-wise masks); then 0."""
    if t < s_a:
        return 1.0, False
    if t < s_a + s_b:
        return 1.0 - (t - s_a) / max(1, s_b), True
    return 0.0, False


BLOCK_CLASS_HINTS = ("Block", "Residual", "Bottleneck", "Layer")


def find_blocks(model: nn.Module) -> list[str]:
    """Residual/transformer blocks by class name (BasicBlock, InvertedResidual, Block, ...), outermost only."""
    found: list[str] = []
    for name, m in model.named_modules():
        # blocks are containers: a leaf such as LayerNorm matches the "Layer" hint but is not a block
        if not name or isinstance(m, (nn.Sequential, nn.ModuleList)) or not any(True for _ in m.children()):
            continue
        if any(h in type(m).__name__ for h in BLOCK_CLASS_HINTS) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return found


def find_attention(model: nn.Module, points: AttentionPoints = AttentionPoints()) -> list[str]:
    """Modules that have all the attention children named by ``points``."""
    out = []
    for name, m in model.named_modules():
        kids = dict(m.named_children())
        if all(getattr(points, f) in kids for f in ("q", "k", "v", "softmax", "context", "out")):
            out.append(name)
    return out
