"""Golden values and identities for every registered KD loss.

Golden numbers are computed here with an independent float64 numpy implementation of each paper's formula, on a
fixed hand-written batch, and compared with the torch modules.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.kd.losses import LOSSES, DecoupledKD, build_loss

ZS = np.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.5], [-1.0, 1.5, 0.3, 0.9]])
ZT = np.array([[3.0, 0.0, -2.0, 0.5], [0.0, 0.5, 2.5, 0.0], [-0.5, 2.0, 0.0, 1.5]])
Y = np.array([0, 2, 1])


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp(z / t - (z / t).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def ref_kd(t: float = 4.0, w: float = 0.9) -> float:
    return w * t * t * kl(softmax(ZT, t), softmax(ZS, t))


def ref_dkd(alpha: float = 1.0, beta: float = 8.0, t: float = 4.0) -> float:
    ps, pt = softmax(ZS, t), softmax(ZT, t)
    gt = np.eye(4)[Y].astype(bool)
    bs = np.stack([ps[gt], 1 - ps[gt]], 1)
    bt = np.stack([pt[gt], 1 - pt[gt]], 1)
    tckd = kl(bt, bs)
    nt_s = ps[~gt].reshape(3, 3)
    nt_t = pt[~gt].reshape(3, 3)
    nckd = kl(nt_t / nt_t.sum(1, keepdims=True), nt_s / nt_s.sum(1, keepdims=True))
    return t * t * (alpha * tckd + beta * nckd)


def ref_dist(beta: float = 1.0, gamma: float = 1.0, t: float = 1.0) -> float:
    ys, yt = softmax(ZS, t), softmax(ZT, t)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(3)])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(4)])
    return t * t * (beta * inter + gamma * intra)


def ref_nkd(t: float = 1.0, gamma: float = 1.5) -> float:
    ps, pt = softmax(ZS), softmax(ZT)
    loss_t = -np.mean(pt[np.arange(3), Y] * np.log(ps[np.arange(3), Y]))
    mask = ~np.eye(4)[Y].astype(bool)
    s_nt, t_nt = ZS[mask].reshape(3, 3), ZT[mask].reshape(3, 3)
    loss_n = np.mean((softmax(t_nt, t) * np.log(softmax(s_nt, t))).sum(1))
    return float(loss_t - gamma * t * t * loss_n)


def run(name: str, **kw: float) -> float:
    zs = torch.tensor(ZS, dtype=torch.float64)
    zt = torch.tensor(ZT, dtype=torch.float64)
    return float(build_loss(name, **kw)(zs, zt, torch.tensor(Y), progress=1.0))


@pytest.mark.parametrize(("name", "ref"), [("kd", ref_kd), ("dkd", ref_dkd), ("dist", ref_dist), ("nkd", ref_nkd)])
def test_golden_value_matches_independent_formula(name: str, ref) -> None:  # noqa: ANN001
    got, want = run(name), ref()
    assert want > 0.01  # a batch on which the loss is not trivially zero
    # DIST's Pearson correlation carries the reference code's eps = 1e-8 in its denominator (≈1e-6 relative here).
    assert got == pytest.approx(want, rel=1e-5 if name == "dist" else 1e-9)


def test_golden_numbers_are_pinned() -> None:
    # Regression pins (computed once from the formulas above), so a silent change to both sides is caught too.
    assert run("kd") == pytest.approx(0.13016871, rel=1e-6)
    assert run("dkd") == pytest.approx(0.88084273, rel=1e-6)
    assert run("dist") == pytest.approx(0.03165899, rel=1e-6)
    assert run("nkd") == pytest.approx(1.69853677, rel=1e-6)


def test_every_registered_loss_is_tested() -> None:
    assert set(LOSSES.names()) == {"ce", "kd", "dkd", "dist", "nkd"}


def test_ce_has_no_distillation_term() -> None:
    assert run("ce") == 0.0


def test_kd_gradient_magnitude_is_independent_of_temperature() -> None:
    """The τ² factor: for large τ, ∂L/∂z_S ≈ (z_S − z_T)/C (mean-centred), independent of τ."""
    grads = []
    for t in (8.0, 16.0, 32.0):
        zs = torch.tensor(ZS, requires_grad=True)
        build_loss("kd", temperature=t, weight=1.0)(zs, torch.tensor(ZT), torch.tensor(Y)).backward()
        grads.append(zs.grad.norm().item())
    assert grads[0] == pytest.approx(grads[2], rel=0.05)
    assert grads[1] == pytest.approx(grads[2], rel=0.02)


def test_dkd_decomposition_identity() -> None:
    """KD = TCKD + (1 − p_t^T) · NCKD (Zhao et al. 2022, Eq. 7)."""
    dkd = DecoupledKD(temperature=1.0)
    zs, zt, y = torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y)
    ps, pt = torch.softmax(zs, 1), torch.softmax(zt, 1)
    per_sample = []
    for i in range(3):
        tckd, nckd = dkd.parts(zs[i : i + 1], zt[i : i + 1], y[i : i + 1])
        per_sample.append(float(tckd + (1 - pt[i, y[i]]) * nckd))
    kd = (pt * (pt.log() - ps.log())).sum(1)
    assert np.allclose(per_sample, kd.numpy(), atol=1e-9)


def test_dkd_warmup_ramps_linearly_over_a_fraction_of_the_run() -> None:
    zs, zt, y = torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y)
    dkd = DecoupledKD()  # warm-up 1/12 of the run, whatever its length (issue #14: 20 epochs never ended in 10)
    full = float(dkd(zs, zt, y, progress=1.0))
    assert float(dkd(zs, zt, y, progress=1 / 12)) == pytest.approx(full)
    assert float(dkd(zs, zt, y, progress=1 / 24)) == pytest.approx(full / 2)
    assert float(dkd(zs, zt, y, progress=0.0)) == 0.0
    with pytest.raises(ConfigError, match="fraction"):
        DecoupledKD(warmup=20)


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "nkd"])
def test_loss_is_minimal_when_student_equals_teacher(name: str) -> None:
    z = torch.tensor(ZT)
    at_teacher = float(build_loss(name)(z, z, torch.tensor(Y), progress=1.0))
    assert run(name) > at_teacher - 1e-9
    if name in ("kd", "dkd", "dist"):
        assert at_teacher == pytest.approx(0.0, abs=1e-6)
