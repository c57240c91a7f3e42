"""The BN-statistics matching losses of ZeroQ, DeepInversion and Genie-D, and the input prior.

For BN layer l with running statistics (μ_l, σ²_l) and the statistics of its input on the synthetic batch:

- Genie-D (batch statistics, std, squared l2 over channels):
      L_l = ‖μ_l − μ̂_l‖² / C + ‖σ_l − σ̂_l‖² / C,   σ = sqrt(var + 1e-6)
- ZeroQ (per-sample statistics m, s ∈ R^{B×C}, std, squared l2 over the batch):
      L_l = ‖μ_l − m_l‖² / B + ‖σ_l − s_l‖² / B
- DeepInversion (batch statistics, variance, unsquared l2 norm):
      L_l = ‖σ̂²_l − σ²_l‖₂ + ‖μ̂_l − μ_l‖₂

The input prior (ZeroQ, Genie) pulls the per-sample, per-channel input statistics to N(0, 1):
      L_in = ‖mean_hw(x)‖² / B + ‖1 − std_hw(x)‖² / B
"""

from __future__ import annotations

import torch

from edgekd.data.synth.hooks import BNStatsHook

EPS = 1e-6


def bn_matching_loss(hook: BNStatsHook, match: str, first_multiplier: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weighted loss, unweighted loss) summed over every BN call of the last forward pass."""
    total = torch.zeros(())
    plain = torch.zeros(())
    for i, (mean, var, rm, rv) in enumerate(hook.targets()):
        if match == "std-l2sq":
            s_hat, s = (var + EPS).sqrt(), (rv + EPS).sqrt()
            n = mean.shape[0]  # C for batch statistics, B for per-sample statistics
            term = ((rm - mean) ** 2).sum() / n + ((s - s_hat) ** 2).sum() / n
        elif match == "var-l2":
            term = (var - rv).norm() + (mean - rm).norm()
        else:
            raise ValueError(f"unknown BN matching {match!r}")
        total = total + (first_multiplier if i == 0 else 1.0) * term
        plain = plain + term.detach()
    return total, plain


def input_prior(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(2)
    m = flat.mean(2)
    s = (flat.var(2, unbiased=False) + EPS).sqrt()
    b = x.shape[0]
    return (m ** 2).sum() / b + ((1 - s) ** 2).sum() / b


@torch.no_grad()
def bn_statistics_gap(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, float]]:
    """Per BN layer: how far the batch statistics of ``x`` are from the running statistics, as

        mean_gap = ‖μ̂ − μ‖₂ / ‖σ‖₂        std_gap = ‖σ̂ − σ‖₂ / ‖σ‖₂

    (both scale-free; 0 means a perfect match). Used to check synthetic data and in the benchmark."""
    from edgekd.data.synth.hooks import bn_stats

    model.eval()
    with bn_stats(model, "batch") as hook:
        model(x)
        out = []
        for name, (mean, var, rm, rv) in zip(hook.called_layers(), hook.targets()):
            s, s_hat = (rv + EPS).sqrt(), (var + EPS).sqrt()
            out.append({"layer": name, "mean_gap": float((mean - rm).norm() / s.norm()),
                        "std_gap": float((s_hat - s).norm() / s.norm())})
    return out
