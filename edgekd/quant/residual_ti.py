"""Teacher Intervention for residual CNNs: the residual-branch analogue of TI-O and TI-M (issue #14 §3).

Kim et al. (EACL 2023) keep the student's residual stream X^S_l and replace one signal *inside* a sub-layer with
the teacher's: the attention output (TI-O), the context (TI-C) or the attention map (TI-M). A residual CNN block

    y = act(S(x) + F(x)),     F = the residual branch (conv → … → conv), S = identity or a projection shortcut

has the same shape, so the analogue keeps the student's stream and shortcut and intervenes in F:

    TI-RO   F(x^S)                 := F^T(x^T)          (the whole branch output; W_F learns only locally)
    TI-RM   input of F's last conv := the teacher's     (the first part of F is "perfect"; the last conv learns)
    TI-RG   RO for t < s/3, then RM, during step 1 (s steps) — O → M as in TI-G; step 2: no intervention

As in TI, where a signal is replaced the branch's input is detached (``sg(x^S)``), so the branch's own weights learn
only from a local loss — here MSE between the student's own replaced signal and the teacher's — and quantization
error cannot flow back through it; the stream below still learns through the shortcut. This differs from edgekd's
block reconstruction (``TI-BR``, BRECQ/QDrop style), which feeds each block the teacher's *whole* block input and
so replaces the student's stream too.

Branches are found with ``torch.fx`` on each block: every ``add`` whose two operands both come from the block input;
the operand with the longer chain of calls is F. Its output point is the last module of that chain and its "M"
point the input of the chain's last Conv2d/Linear. Blocks fx cannot trace, or without such an add, are skipped.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from edgekd.kd.features import get_module

RESIDUAL_TI_MODES = ("ro", "rm", "rg")


@dataclass(frozen=True)
class Branch:
    """One residual branch: module paths of its first call (input detached), its output, and its last weight layer."""

    block: str
    first: str
    out: str
    last_layer: str | None


def _is_add(node: Any) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, torch.add)) or (
        node.op == "call_method" and node.target == "add")


def _chain(node: Any, placeholder: Any) -> list[Any] | None:
    """The call nodes from ``placeholder`` to ``node`` following first tensor arguments; None if it never gets there."""
    out = []
    while node is not placeholder:
        if node.op not in ("call_module", "call_function", "call_method"):
            return None
        out.append(node)
        nxt = next((a for a in node.args if hasattr(a, "op")), None)
        if nxt is None:
            return None
        node = nxt
    return out[::-1]


def find_residual_branches(model: nn.Module, blocks: list[str]) -> list[Branch]:
    """Residual branches of ``blocks`` (module paths), found by tracing each block with torch.fx."""
    import torch.fx as fx

    found: list[Branch] = []
    for b in blocks:
        block = get_module(model, b)
        try:
            graph = fx.symbolic_trace(block).graph
        except Exception:  # noqa: BLE001 - an untraceable block is simply not intervened in
            continue
        ph = next((n for n in graph.nodes if n.op == "placeholder"), None)
        if ph is None:
            continue
        for node in graph.nodes:
            if not _is_add(node) or len(node.args) < 2:
                continue
            chains = [_chain(a, ph) if hasattr(a, "op") else None for a in node.args[:2]]
            if any(c is None for c in chains):
                continue
            branch = max(chains, key=len)  # type: ignore[arg-type]
            mods = [n for n in branch if n.op == "call_module"]
            if len(mods) < 2 or branch[-1].op != "call_module":
                continue
            layers = [n for n in mods if isinstance(get_module(block, n.target), (nn.Conv2d, nn.Linear))]
            found.append(Branch(b, f"{b}.{mods[0].target}", f"{b}.{branch[-1].target}",
                                f"{b}.{layers[-1].target}" if len(layers) >= 2 else None))
    return found


def residual_mode(mode: str, t: int, s: int) -> str:
    """The mode at step ``t`` of step 1 (``s`` steps): RG is RO for t < s/3, then RM."""
    if mode == "rg":
        return "ro" if t < s / 3 else "rm"
    return mode


class ResidualBranchIntervention:
    """TI-RO / TI-RM on every branch; ``mode`` is set per step ("none" disables). ``local`` holds the local losses'
    (student, teacher) pairs of the last forward pass."""

    def __init__(self, student: nn.Module, teacher: nn.Module, branches: list[Branch]) -> None:
        self.branches = branches
        self.mode = "none"
        self.t_sig: dict[str, torch.Tensor] = {}
        self.local: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles: list[Any] = []
        for br in branches:
            self.handles.append(get_module(teacher, br.out).register_forward_hook(self._rec_out(f"{br.out}:o")))
            self.handles.append(get_module(student, br.out).register_forward_hook(self._replace_out(f"{br.out}:o")))
            self.handles.append(get_module(student, br.first).register_forward_pre_hook(self._detach()))
            if br.last_layer is not None:
                key = f"{br.last_layer}:m"
                self.handles.append(get_module(teacher, br.last_layer).register_forward_pre_hook(self._rec_in(key)))
                self.handles.append(get_module(student, br.last_layer).register_forward_pre_hook(self._replace_in(key)))

    def _rec_out(self, key: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> None:
            self.t_sig[key] = out.detach()

        return hook

    def _rec_in(self, key: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
            self.t_sig[key] = args[0].detach()

        return hook

    def _replace_out(self, key: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, _a: Any, out: Any) -> Any:
            if self.mode != "ro":
                return None
            self.local[key] = (out, self.t_sig[key])
            return self.t_sig[key]

        return hook

    def _replace_in(self, key: str) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> Any:
            if self.mode != "rm":
                return None
            self.local[key] = (args[0], self.t_sig[key])
            return (self.t_sig[key], *args[1:])

        return hook

    def _detach(self) -> Callable[..., Any]:
        def hook(_m: nn.Module, args: tuple[Any, ...]) -> Any:
            if self.mode in ("ro", "rm"):
                return (args[0].detach(), *args[1:])
            return None

        return hook

    def pop_local(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out, self.local = list(self.local.values()), {}
        return out

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
