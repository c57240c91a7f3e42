"""Image priors and augmentations used by DeepInversion-style pixel optimisation (Yin et al., CVPR 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def total_variation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepInversion's TV priors over four directions (→, ↓, ↘, ↗):

        TV_l2 = Σ_d ‖Δ_d x‖₂          TV_l1 = Σ_d mean |Δ_d x|

    (``get_image_prior_losses`` in NVlabs/DeepInversion, which uses the l2 *norm*, not its square).
    """
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    l2 = d1.norm() + d2.norm() + d3.norm() + d4.norm()
    l1 = d1.abs().mean() + d2.abs().mean() + d3.abs().mean() + d4.abs().mean()
    return l2, l1


def jitter_flip(x: torch.Tensor, jitter: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Random roll by up to ±``jitter`` px in x and y (one shift per batch, as in DeepInversion) and a random
    horizontal flip of the whole batch."""
    if jitter > 0:
        ox, oy = (torch.randint(-jitter, jitter + 1, (2,), generator=generator)).tolist()
        x = torch.roll(x, shifts=(oy, ox), dims=(-2, -1))
    if flip and bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    return x


def js_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """Jensen–Shannon divergence of softmax(p/T) and softmax(q/T), probabilities clamped to [0.01, 0.99]
    (Adaptive DeepInversion's competition term)."""
    p = F.softmax(p_logits / temperature, dim=1).clamp(0.01, 0.99)
    q = F.softmax(q_logits / temperature, dim=1).clamp(0.01, 0.99)
    m = 0.5 * (p + q)
    return 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1)).mean()
