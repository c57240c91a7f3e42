"""QAT with distillation (quantized distillation, Polino et al. 2018; TernaryBERT-style losses) and Teacher
Intervention schedules.

    L = τ²·KL(p_T^τ ‖ p_S^τ) + β·Σ_k MSE(h^S_k, h^T_k) + γ·Σ_l MSE(AS^S_l, AS^T_l)

h_k are block outputs (module paths), AS_l pre-softmax attention scores of attention modules. The FP teacher is the
model the student is a quantized copy of. With Teacher Intervention, step 1 (``ti_steps``) runs the intervention
schedule and step 2 runs plain QAT-KD for the rest of the budget with a fresh LR schedule, so the total number of
steps equals the baseline's (Kim et al. 2023, §1.5 of the spec).
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from edgekd import progress
from edgekd.data import Dataset
from edgekd.errors import StageError, UsageError
from edgekd.kd.trainer import accuracy, lr_at, predict_logits
from edgekd.quant.intervention import (AttentionIntervention, BlockIntervention, find_attention, find_blocks, ti_b_p,
                                       ti_g_mode)
from edgekd.quant.qat import regularization


class QATTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    feature_weight: float = Field(1.0, ge=0)
    attn_weight: float = Field(1.0, ge=0)
    ti: Literal["none", "b", "o", "c", "m", "g"] = "none"
    ti_steps: int | None = Field(None, ge=1, description="step-1 length; default 10% of steps")
    blocks: list[str] | None = None
    eval_every: int = Field(50, ge=1)
    eval_samples: int = Field(2000, ge=1)
    seed: int = 0
    threads: int | None = None


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _freeze_bn(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@torch.no_grad()
def block_errors(student: nn.Module, teacher: nn.Module, blocks: list[str], x: np.ndarray) -> dict[str, float]:
    """Per-block MSE between student and teacher outputs on the student's own path (no intervention)."""
    from edgekd.kd.features import FeatureRecorder

    rs, rt = FeatureRecorder(student, blocks), FeatureRecorder(teacher, blocks)
    student.eval(), teacher.eval()
    xb = torch.from_numpy(x)
    student(xb), teacher(xb)
    s, t = rs.pop(), rt.pop()
    rs.close(), rt.close()
    return {b: float(F.mse_loss(s[b], t[b])) for b in blocks}


def train_qat(teacher: nn.Module, student: nn.Module, data: Dataset, cfg: QATTrainConfig) -> dict[str, Any]:
    """Train ``student`` (fake-quantized) from ``teacher``; returns the accuracy-vs-step curve and diagnostics."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    blocks = cfg.blocks if cfg.blocks is not None else find_blocks(teacher)
    attn = find_attention(teacher)
    ti = cfg.ti
    if ti in ("o", "c", "m", "g") and not attn:
        raise UsageError(f"TI-{ti.upper()} needs attention modules (children q, k, v, softmax, context, proj)",
                         "use --ti-mode b (block-wise intervention) for CNNs")
    if ti == "b" and not blocks:
        raise UsageError("TI-B found no blocks in the model", "pass --ti-blocks with module paths, e.g. layer1.0,layer2.0")
    block_iv = BlockIntervention(student, teacher, blocks) if blocks else None
    attn_iv = AttentionIntervention(student, teacher, attn) if attn else None
    s1 = (cfg.ti_steps or max(1, cfg.steps // 10)) if ti != "none" else 0
    s1 = min(s1, cfg.steps)

    # initialise quantizer ranges on one real batch, before the optimizer sees the parameters
    with torch.no_grad():
        student.eval()
        student(torch.from_numpy(data.train.x[: cfg.batch_size]))
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    xv, yv = data.val.x[: cfg.eval_samples], data.val.y[: cfg.eval_samples]
    curve: list[dict[str, Any]] = [{"step": 0, "val_top1": accuracy(predict_logits(student, xv), yv)}]
    x_all, n = torch.from_numpy(data.train.x), len(data.train)
    t0 = time.time()
    with progress.bar(f"QAT ({'TI-' + ti.upper() if ti != 'none' else 'KD'})", cfg.steps) as bar:
        for step in range(cfg.steps):
            phase1 = step < s1
            if ti != "none" and step == s1:
                # step 2 is a separate run in the reference code (run_TI_step_2.sh): fresh optimizer state, so Adam's
                # moments from the intervened objective do not carry over
                opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            # step 2 restarts the LR schedule (warm-up 10 %, cosine), as the reference two-step recipe does
            if phase1:
                lr = lr_at(step, s1, max(1, s1 // 10), cfg.lr)
            else:
                lr = lr_at(step - s1, cfg.steps - s1, max(1, (cfg.steps - s1) // 10), cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            if block_iv is not None:
                p, elem = ti_b_p(step, s1 // 2, s1 - s1 // 2) if ti == "b" else (0.0, False)
                block_iv.p, block_iv.elementwise = p, elem
            if attn_iv is not None:
                attn_iv.mode = (ti_g_mode(step, s1) if ti == "g" else ti) if (phase1 and ti in ("o", "c", "m", "g")) else "none"
            idx = torch.from_numpy(rng.integers(0, n, cfg.batch_size))
            xb = x_all[idx]
            with torch.no_grad():
                zt = _logits(teacher(xb))
            student.train()
            _freeze_bn(student)
            zs = _logits(student(xb))
            tau = cfg.temperature
            loss = tau * tau * F.kl_div(F.log_softmax(zs / tau, 1), F.softmax(zt / tau, 1), reduction="batchmean")
            if block_iv is not None and cfg.feature_weight > 0:
                loss = loss + cfg.feature_weight * sum(F.mse_loss(block_iv.s_out[b], block_iv.t_out[b]) for b in blocks)
            if attn_iv is not None and cfg.attn_weight > 0:
                loss = loss + cfg.attn_weight * sum(F.mse_loss(attn_iv.s_scores[a], attn_iv.t_scores[a]) for a in attn)
            loss = loss + regularization(student)
            if not torch.isfinite(loss):
                raise StageError(f"QAT loss became {float(loss)} at step {step}", "lower the QAT learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1, info=f"loss {loss.item():.3f}")
            if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
                if block_iv is not None:
                    block_iv.p = 0.0
                if attn_iv is not None:
                    attn_iv.mode = "none"
                curve.append({"step": step + 1, "val_top1": accuracy(predict_logits(student, xv), yv), "loss": loss.item()})
    errors = block_errors(student, teacher, blocks, data.val.x[:512]) if blocks else {}
    for iv in (block_iv, attn_iv):
        if iv is not None:
            iv.close()
    student.eval()
    return {"curve": curve, "final_val_top1": curve[-1]["val_top1"], "block_mse": errors, "ti": ti, "ti_steps": s1,
            "steps": cfg.steps, "seconds": round(time.time() - t0, 2)}
