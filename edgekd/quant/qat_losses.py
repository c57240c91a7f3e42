"""The two QAT-KD loss sets and the hidden signals they read, recorded with forward hooks on module paths.

``ternarybert`` — the loss set of TernaryBERT (Zhang et al., EMNLP 2020) that Teacher Intervention trains with in
both of its steps (Kim et al., EACL 2023; ``MarsJacobs/ti-kd-qat`` ``main.py``), every term weighted 1:

    L = −Σ_c softmax(z^T)_c · log softmax(z^S)_c                        soft cross-entropy at T = 1
      + Σ_{l=0..L} MSE(X^S_l, X^T_l)                                    every hidden state, l = 0 the embedding output
      + Σ_l MSE(AS^S_l, AS^T_l)                                         pre-softmax attention scores (≤ −100 → 0)
      + Σ_l MSE(A^S_l, A^T_l)                                           the attention sub-layer's output

X_l are the blocks' outputs and X_0 the first block's input (the patch/stem embedding). For a pre-LN block (timm's
ViT, edgekd's zoo) A_l = X_l + Attn(LN(X_l)) is the input of the block's second norm (``norm2`` or a known alias);
where no such norm exists, the attention module's output is used. CNNs have no attention terms.

``edgekd`` — edgekd's earlier set, kept as an option: τ²·KL(p_T^τ ‖ p_S^τ) at τ = 4 + β·Σ_k MSE(block outputs)
+ γ·Σ_l MSE(pre-softmax scores).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.kd.features import get_module

LOSS_SETS = ("ternarybert", "edgekd")
POST_ATTENTION_NORMS = ("norm2", "ln_2", "layernorm_after", "post_attention_layernorm")


def soft_cross_entropy(zs: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
    """−Σ_c softmax(z^T)_c log softmax(z^S)_c, mean over the batch (T = 1)."""
    return -(F.softmax(zt, 1) * F.log_softmax(zs, 1)).sum(1).mean()


def kd_kl(zs: torch.Tensor, zt: torch.Tensor, tau: float) -> torch.Tensor:
    """τ²·KL(softmax(z^T/τ) ‖ softmax(z^S/τ)), batch mean (Hinton et al. 2015)."""
    return tau * tau * F.kl_div(F.log_softmax(zs / tau, 1), F.softmax(zt / tau, 1), reduction="batchmean")


def masked_score_mse(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE of attention scores with masked entries (≤ −100, as the reference code masks) set to 0 on both sides."""
    s = torch.where(s <= -100, torch.zeros_like(s), s)
    t = torch.where(t <= -100, torch.zeros_like(t), t)
    return F.mse_loss(s, t)


def post_attention_point(model: nn.Module, attn_path: str) -> tuple[str, str]:
    """(module path, "in" | "out") where the attention sub-layer's output A_l is seen for ``attn_path``."""
    parent = attn_path.rpartition(".")[0]
    modules = dict(model.named_modules())
    for name in POST_ATTENTION_NORMS:
        path = f"{parent}.{name}" if parent else name
        if path in modules:
            return path, "in"
    return attn_path, "out"


class SignalPair:
    """Records named signals (a module's input or output) on the student and the teacher at every forward pass.
    The teacher's are detached."""

    def __init__(self, student: nn.Module, teacher: nn.Module, points: dict[str, tuple[str, str]]) -> None:
        self.points = points
        self.s: dict[str, torch.Tensor] = {}
        self.t: dict[str, torch.Tensor] = {}
        self.handles: list[Any] = []
        for key, (path, where) in points.items():
            for model, store, detach in ((student, self.s, False), (teacher, self.t, True)):
                m = get_module(model, path)
                if where == "in":
                    self.handles.append(m.register_forward_pre_hook(self._rec_in(store, key, detach)))
                else:
                    self.handles.append(m.register_forward_hook(self._rec_out(store, key, detach)))

    @staticmethod
    def _rec_in(store: dict[str, torch.Tensor], key: str, detach: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            store[key] = args[0].detach() if detach else args[0]

        return hook

    @staticmethod
    def _rec_out(store: dict[str, torch.Tensor], key: str, detach: bool) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            out = out[0] if isinstance(out, (tuple, list)) else out
            store[key] = out.detach() if detach else out

        return hook

    def mse(self, prefix: str) -> torch.Tensor:
        """Σ MSE over the signals whose key starts with ``prefix``."""
        keys = [k for k in self.points if k.startswith(prefix)]
        return sum((F.mse_loss(self.s[k], self.t[k]) for k in keys), torch.zeros(()))

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def signal_points(model: nn.Module, blocks: list[str], attn: list[str], loss_set: str) -> dict[str, tuple[str, str]]:
    """The hidden signals a loss set reads: block outputs (both sets); for ``ternarybert`` also the embedding output
    (first block's input) and each attention sub-layer's output."""
    points = {f"hidden/{b}": (b, "out") for b in blocks}
    if loss_set == "ternarybert":
        if blocks:
            points["hidden/embedding"] = (blocks[0], "in")
        for a in attn:
            points[f"attn_out/{a}"] = post_attention_point(model, a)
    return points


def loss_terms(loss_set: str, zs: torch.Tensor, zt: torch.Tensor, signals: SignalPair | None,
               scores: list[tuple[torch.Tensor, torch.Tensor]], *, temperature: float, feature_weight: float,
               attn_weight: float) -> dict[str, torch.Tensor]:
    """The named terms of a loss set (sum them for the loss)."""
    zero = torch.zeros(())
    if loss_set == "ternarybert":
        return {"pred": soft_cross_entropy(zs, zt),
                "rep": signals.mse("hidden/") if signals is not None else zero,
                "attn": sum((masked_score_mse(s, t) for s, t in scores), zero),
                "out": signals.mse("attn_out/") if signals is not None else zero}
    return {"kd": kd_kl(zs, zt, temperature),
            "feature": feature_weight * signals.mse("hidden/") if signals is not None and feature_weight > 0 else zero,
            "attn": attn_weight * sum((F.mse_loss(s, t) for s, t in scores), zero) if attn_weight > 0 else zero}
