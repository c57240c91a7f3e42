"""QAT with distillation (quantized distillation, Polino et al. 2018) and Teacher Intervention schedules.

Two loss sets (:mod:`edgekd.quant.qat_losses`): ``ternarybert``, the set TernaryBERT and Teacher Intervention train
with (soft CE at T = 1, MSE on every hidden state including the embedding output, on pre-softmax attention scores and
on the attention sub-layer's output), and ``edgekd``:

    L = τ²·KL(p_T^τ ‖ p_S^τ) + β·Σ_k MSE(h^S_k, h^T_k) + γ·Σ_l MSE(AS^S_l, AS^T_l)

h_k are block outputs (module paths), AS_l pre-softmax attention scores of attention modules. The FP teacher is the
model the student is a quantized copy of. With Teacher Intervention, step 1 (``ti_steps``) runs the intervention
schedule and step 2 runs plain QAT-KD for the rest of the budget with a fresh optimizer and LR schedule, so the total
number of steps equals the baseline's (Kim et al. 2023, §1.5 of the spec). Interventions: attention TI-O/C/M/G
(:mod:`edgekd.quant.intervention`), residual-branch TI-RO/RM/RG for CNNs (:mod:`edgekd.quant.residual_ti`), and
block reconstruction TI-BR (BRECQ/QDrop-style: each block fed the teacher's block input).
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
from edgekd.models.freeze import check_student, frozen
from edgekd.quant.intervention import (AttentionIntervention, BlockIntervention, find_attention, find_blocks, ti_b_p,
                                       ti_g_mode)
from edgekd.quant.qat import regularization
from edgekd.quant.qat_losses import SignalPair, loss_terms, signal_points
from edgekd.quant.residual_ti import RESIDUAL_TI_MODES, ResidualBranchIntervention, find_residual_branches, residual_mode


class QATTrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    temperature: float = Field(4.0, gt=0)
    feature_weight: float = Field(1.0, ge=0)
    attn_weight: float = Field(1.0, ge=0)
    ti: Literal["none", "br", "b", "ro", "rm", "rg", "o", "c", "m", "g"] = Field(
        "none", description="o/c/m/g: attention TI; ro/rm/rg: residual-branch TI (CNNs); br: block reconstruction "
                            "(b is its old name)")
    ti_steps: int | None = Field(None, ge=1, description="step-1 length; default 10% of steps")
    loss_set: Literal["auto", "ternarybert", "edgekd"] = Field(
        "auto", description="auto: ternarybert (the TI paper's) with TI, edgekd without")
    schedule: Literal["cosine", "linear"] = Field("cosine", description="LR decay after the warm-up (per step)")
    warmup_fraction: float = Field(0.1, ge=0, le=1)
    blocks: list[str] | None = None
    eval_every: int = Field(50, ge=1)
    eval_dense_until: int = Field(0, ge=0, description="evaluate every 10 steps up to this step, then every eval_every")
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


def train_qat(teacher: nn.Module, student: nn.Module, data: Dataset, cfg: QATTrainConfig,
              task_loss: Any = None, val_metric: "tuple[str, Any] | None" = None) -> dict[str, Any]:
    """Train ``student`` (fake-quantized) from ``teacher``; returns the accuracy-vs-step curve and diagnostics.

    A task other than classification passes its own distillation loss (``task_loss(zs, zt, y, progress)``, e.g.
    :class:`edgekd.kd.detection_losses.DetectionKD`, replacing the logit KD term; the feature terms stay) and its
    val metric (``(name, fn(model, x, y))``; the curve's ``val_<name>``, top-1 by default).

    The teacher is used frozen and handed back unchanged (:func:`edgekd.models.freeze.frozen`), so further
    students can be built from the same object. The result records how many student parameters were trainable
    and how many changed (``weights_changed``), so a caller can check the thing trained."""
    check_student(student, teacher)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    with frozen(teacher):
        res = _train_qat(teacher, student, data, cfg, task_loss, val_metric)
    after = dict(student.named_parameters())
    res["trainable_params"] = sum(p.numel() for p in after.values() if p.requires_grad)
    res["total_params"] = sum(p.numel() for p in after.values())
    res["weights_changed"] = sum(p.numel() for n, p in after.items() if not torch.equal(before[n], p.detach()))
    return res


def _lr(cfg: QATTrainConfig, step: int, total: int) -> float:
    warmup = max(1, int(cfg.warmup_fraction * total))
    if cfg.schedule == "linear":  # BertAdam's warmup_linear, as the TI reference trains
        return cfg.lr * ((step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup)))
    return lr_at(step, total, warmup, cfg.lr)


def _top1(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return accuracy(predict_logits(model, x), y)


def _train_qat(teacher: nn.Module, student: nn.Module, data: Dataset, cfg: QATTrainConfig, task_loss: Any,
               val_metric: "tuple[str, Any] | None") -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    blocks = cfg.blocks if cfg.blocks is not None else find_blocks(teacher)
    attn = find_attention(teacher)
    ti = "br" if cfg.ti == "b" else cfg.ti
    loss_set = cfg.loss_set if cfg.loss_set != "auto" else ("ternarybert" if ti != "none" else "edgekd")
    if ti in ("o", "c", "m", "g") and not attn:
        raise UsageError(f"TI-{ti.upper()} needs attention modules (children q, k, v, softmax, context, proj)",
                         "for CNNs use --ti-mode rg (residual-branch intervention) or br (block reconstruction)")
    if ti == "br" and not blocks:
        raise UsageError("TI-BR found no blocks in the model", "pass --ti-blocks with module paths, e.g. layer1.0,layer2.0")
    branches = find_residual_branches(teacher, blocks) if ti in RESIDUAL_TI_MODES else []
    if ti in RESIDUAL_TI_MODES and not branches:
        raise UsageError(f"TI-{ti.upper()} found no residual branches (y = shortcut(x) + F(x)) in the blocks",
                         "pass --ti-blocks with residual block paths, or use --ti-mode br")
    block_iv = BlockIntervention(student, teacher, blocks) if ti == "br" else None
    attn_iv = AttentionIntervention(student, teacher, attn) if attn else None
    res_iv = ResidualBranchIntervention(student, teacher, branches) if branches else None
    signals = SignalPair(student, teacher, signal_points(teacher, blocks, attn, loss_set)) if blocks or attn else None
    s1 = (cfg.ti_steps or max(1, cfg.steps // 10)) if ti != "none" else 0
    s1 = min(s1, cfg.steps)

    def interventions_off() -> None:
        if block_iv is not None:
            block_iv.p = 0.0
        if attn_iv is not None:
            attn_iv.mode = "none"
        if res_iv is not None:
            res_iv.mode = "none"

    # initialise quantizer ranges on one real batch, before the optimizer sees the parameters
    with torch.no_grad():
        student.eval()
        student(torch.from_numpy(data.train.x[: cfg.batch_size]))
    params = [p for p in student.parameters() if p.requires_grad]

    def optimizer() -> torch.optim.Optimizer:
        # weight decay on weights only: biases, norms and quantizer steps (1-D or scalar) are not decayed (BERT's rule)
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)

    opt = optimizer()
    xv, yv = data.val.x[: cfg.eval_samples], data.val.y[: cfg.eval_samples]
    metric_name, metric = val_metric or ("top1", _top1)
    vk = f"val_{metric_name}"
    whole = bool(getattr(task_loss, "takes_structure", False))  # a detector's (boxes, scores) stay together
    curve: list[dict[str, Any]] = [{"step": 0, vk: metric(student, xv, yv)}]
    x_all, n = data.train.x, len(data.train)  # indexed per batch (a uint8 split is normalised batch by batch)
    errors_after_step1: dict[str, float] = {}
    t0 = time.time()
    with progress.bar(f"QAT ({'TI-' + ti.upper() if ti != 'none' else 'KD'})", cfg.steps) as bar:
        for step in range(cfg.steps):
            phase1 = step < s1
            if ti != "none" and step == s1:
                # step 2 is a separate run in the reference code (run_TI_step_2.sh): fresh optimizer state, so Adam's
                # moments from the intervened objective do not carry over
                opt = optimizer()
                if blocks:
                    interventions_off()
                    errors_after_step1 = block_errors(student, teacher, blocks, data.val.x[:512])
            # step 2 restarts the LR schedule (warm-up, then decay), as the reference two-step recipe does
            lr = _lr(cfg, step, s1) if phase1 else _lr(cfg, step - s1, cfg.steps - s1)
            for g in opt.param_groups:
                g["lr"] = lr
            interventions_off()
            if phase1 and block_iv is not None:
                block_iv.p, block_iv.elementwise = ti_b_p(step, s1 // 2, s1 - s1 // 2)
            if phase1 and attn_iv is not None and ti in ("o", "c", "m", "g"):
                attn_iv.mode = ti_g_mode(step, s1) if ti == "g" else ti
            if phase1 and res_iv is not None:
                res_iv.mode = residual_mode(ti, step, s1)
            idx = rng.integers(0, n, cfg.batch_size)
            xb = torch.from_numpy(np.ascontiguousarray(x_all[idx]))
            with torch.no_grad():
                zt = teacher(xb) if whole else _logits(teacher(xb))
            student.train()
            _freeze_bn(student)
            zs = student(xb) if whole else _logits(student(xb))
            scores = [(attn_iv.s_scores[a], attn_iv.t_scores[a]) for a in attn] if attn_iv is not None else []
            if task_loss is None:
                terms = loss_terms(loss_set, zs, zt, signals, scores, temperature=cfg.temperature,
                                   feature_weight=cfg.feature_weight, attn_weight=cfg.attn_weight)
            else:  # the task's own KD on its outputs, the block features as for a classifier
                yb = torch.from_numpy(np.asarray(data.train.y[idx]))
                terms = {"task": task_loss(zs, zt, yb, (step + 1) / cfg.steps),
                         "feature": (cfg.feature_weight * signals.mse("hidden/") if signals is not None and
                                     cfg.feature_weight > 0 else torch.zeros(()))}
            if res_iv is not None:  # the replaced branches learn locally, as TI's Q/K learn from the score loss
                local = res_iv.pop_local()
                if local:
                    terms["local"] = sum((F.mse_loss(s_, t_) for s_, t_ in local), torch.zeros(()))
            loss = sum(terms.values(), torch.zeros(())) + regularization(student)
            if not torch.isfinite(loss):
                raise StageError(f"QAT loss became {float(loss)} at step {step}", "lower the QAT learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1, info=f"loss {loss.item():.3f}")
            every = 10 if step + 1 <= cfg.eval_dense_until else cfg.eval_every
            if (step + 1) % every == 0 or step + 1 == cfg.steps:
                interventions_off()
                curve.append({"step": step + 1, vk: metric(student, xv, yv), "loss": loss.item(),
                              **{f"loss_{k}": float(v.detach()) for k, v in terms.items()}})
    interventions_off()
    errors = block_errors(student, teacher, blocks, data.val.x[:512]) if blocks else {}
    for iv in (block_iv, attn_iv, res_iv, signals):
        if iv is not None:
            iv.close()
    student.eval()
    return {"curve": curve, f"final_{vk}": curve[-1][vk], "val_metric": metric_name, "block_mse": errors,
            "block_mse_after_step1": errors_after_step1, "ti": ti, "ti_steps": s1, "loss_set": loss_set,
            "residual_branches": [b.out for b in branches], "steps": cfg.steps, "seconds": round(time.time() - t0, 2)}
