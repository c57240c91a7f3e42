"""The distillation trainer: a plain loop that runs unchanged under ``torchrun`` (DDP, gloo on CPU).

- cosine learning-rate schedule with linear warm-up (per step);
- teacher logits cached once when nothing makes them change between epochs (no augmentation, no feature pairs):
  the teacher forward is then paid once instead of once per epoch;
- a checkpoint per epoch (atomic); a re-run resumes from the last finished epoch;
- under DDP each rank trains on its own shard of a shared per-epoch permutation and gradients are averaged;
  only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from edgekd import progress
from edgekd.config import DistillConfig
from edgekd.distributed import dist_info
from edgekd.data import Dataset
from edgekd.kd.augment import augment_batch
from edgekd.kd.features import FeatureKD, FeaturePair, FeatureRecorder
from edgekd.kd.losses import LogitLoss, build_loss
from edgekd.kd.objective import DistillObjective
from edgekd.errors import ConfigError, StageError
from edgekd.fileio import atomic_path
from edgekd.models.freeze import check_student, frozen


@dataclass
class DistResult:
    student: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def mixup_batch(x: torch.Tensor, y: torch.Tensor, alpha: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al., ICLR 2018) as used for distillation by "function matching" (Beyer et al., "Knowledge
    distillation: A good teacher is patient and consistent", CVPR 2022): each sample is mixed with a random partner,

        x̃ = λ·x + (1 − λ)·x[π],   λ ~ Beta(α, α) per sample,

    and the teacher is queried on the *same* x̃ (a consistent teacher), so a small or synthetic transfer set yields a
    new input, and a new teacher answer, at every step. Returns (x̃, the dominant hard label, the mixed one-hot
    target for the cross-entropy term)."""
    n = x.shape[0]
    lam = torch.from_numpy(np.random.beta(alpha, alpha, size=n).astype(np.float32))
    perm = torch.from_numpy(np.random.permutation(n))
    shape = (n,) + (1,) * (x.dim() - 1)
    xm = lam.view(shape) * x + (1 - lam.view(shape)) * x[perm]
    y2 = y[perm]
    soft = lam[:, None] * F.one_hot(y, num_classes).float() + (1 - lam[:, None]) * F.one_hot(y2, num_classes).float()
    return xm, torch.where(lam >= 0.5, y, y2), soft


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    progress_ = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, progress_)))


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Logits for ``x`` in batches. Image batches go in as channels-last, which oneDNN's CPU convolutions run
    1.4–1.8× faster (measured on the demo teacher) with bit-identical results. ``batch``: by default sized to the
    input (:func:`edgekd.inference_batch.inference_batch`)."""
    from edgekd.inference_batch import inference_batch

    batch = batch or inference_batch(x.shape[1:])
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i : i + batch])
        if xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        o = model(xb)
        out.append((o[0] if isinstance(o, (tuple, list)) else o).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.no_grad()
def predict_outputs(model: nn.Module, x: np.ndarray, names: list[str] | None = None, batch: int | None = None) -> np.ndarray:
    """All of a model's outputs for ``x``, packed side by side as (N, Σ d_k) (:func:`edgekd.models.heads.pack`);
    a single output keeps its shape."""
    from edgekd.inference_batch import inference_batch
    from edgekd.models.heads import output_list, pack

    batch = batch or inference_batch(x.shape[1:])
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        o = model(torch.from_numpy(x[i : i + batch]))
        parts = output_list(o, names)
        out.append((parts[0].float() if len(parts) == 1 else pack(parts)).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


ValMetric = tuple[str, Callable[[nn.Module, np.ndarray, np.ndarray], float]]
#: (inputs, targets) → the augmented batch: the images and the targets that go with them
Augment = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _top1(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return accuracy(predict_logits(model, x), y)


class WeightEMA:
    """Exponential moving average of a model's weights and buffers (BN running statistics), as Ultralytics' ModelEMA
    and timm's ModelEmaV2 keep for detectors: θ̄ ← d_t·θ̄ + (1 − d_t)·θ after every optimizer step, with the warm-up
    ramp d_t = min(d, (1 + t) / (10 + t)) of TensorFlow's ExponentialMovingAverage, so a short run is not dominated
    by its random initialisation. Integer buffers (BN's step counter) are copied.

    Written here rather than with ``torch.optim.swa_utils.AveragedModel``: that averages buffers only when told to,
    and its ramp-free EMA lets the initial weights weigh e^(−steps·(1−d)) at the end of a short run."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        import copy

        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def train_student(teacher: nn.Module, student: nn.Module, data: Dataset, cfg: DistillConfig,
                  ckpt_dir: Path | None = None, teacher_logits: np.ndarray | None = None,
                  loss_fn: LogitLoss | None = None, val_metric: ValMetric | None = None,
                  augment: Augment | None = None) -> DistResult:
    """Distill ``teacher`` into ``student`` on ``data.train``; report the val metric every ``cfg.eval_interval()``
    epochs and after the last (``history[-1]["val_<name>"]`` always exists; top-1 unless ``val_metric`` names
    another, as ``(name, fn(model, x, y))``).

    ``teacher_logits`` (optional) are the teacher's outputs on ``data.train.x``, for callers that train several
    students from one teacher (benchmarks); they are used only where the trainer would cache logits itself.
    ``loss_fn`` replaces ``cfg.loss`` (a task's own loss on its outputs). The teacher is used frozen and handed back
    unchanged (:func:`edgekd.models.freeze.frozen`). ``augment`` replaces :func:`augment_batch` when
    ``cfg.augment`` is on, for targets that must move with the pixels (a detector's boxes).
    """
    check_student(student, teacher)
    with frozen(teacher):
        return _train_student(teacher, student, data, cfg, ckpt_dir, teacher_logits, loss_fn, val_metric or ("top1", _top1),
                              augment or (lambda x, y: (augment_batch(x), y)))


def _train_student(teacher: nn.Module, student: nn.Module, data: Dataset, cfg: DistillConfig,
                   ckpt_dir: Path | None, teacher_logits: np.ndarray | None, loss_fn: LogitLoss | None,
                   val_metric: ValMetric, augment: Augment) -> DistResult:
    rank, world = dist_info()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed + rank)

    loss_fn = loss_fn if loss_fn is not None else build_loss(cfg.loss, **cfg.loss_params)
    pairs = [FeaturePair(f.student, f.teacher, f.weight) for f in cfg.features]
    s_rec = FeatureRecorder(student, [p.student for p in pairs]) if pairs else None
    t_rec = FeatureRecorder(teacher, [p.teacher for p in pairs]) if pairs else None
    feature_kd = None
    if pairs:
        probe = torch.from_numpy(data.train.x[:2])
        with torch.no_grad():
            student.eval()
            student(probe)
            teacher(probe)
        feature_kd = FeatureKD(pairs, s_rec.pop(), t_rec.pop())  # type: ignore[union-attr]
    objective = DistillObjective(loss_fn, cfg.ce_weight, feature_kd)
    # a loss that reads several outputs (a detector's boxes and scores) gets them all; others the first (the logits
    # of a model that also returns auxiliary outputs)
    whole = bool(getattr(loss_fn, "takes_structure", False))
    use_teacher = cfg.loss != "ce" or bool(pairs)

    params = list(student.parameters()) + list(objective.parameters())
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    n = len(data.train)
    steps_per_epoch = math.ceil(math.ceil(n / world) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_epochs * steps_per_epoch)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    ema = WeightEMA(student, cfg.ema) if cfg.ema > 0 else None
    if ckpt_dir is not None:
        last = ckpt_dir / "last.pt"
        if last.exists():
            state = torch.load(last, map_location="cpu", weights_only=True)
            student.load_state_dict(state["student"])
            objective.load_state_dict(state["objective"])
            opt.load_state_dict(state["optimizer"])
            history = list(state["history"])
            start_epoch = int(state["epoch"])
            if ema is not None and "ema" in state:
                ema.load_state_dict(state["ema"])
            progress.log(f"distill: resuming from epoch {start_epoch}/{cfg.epochs}")

    if world > 1:
        student_ddp: nn.Module = nn.parallel.DistributedDataParallel(student)
    else:
        student_ddp = student

    online = cfg.augment or cfg.mixup > 0 or bool(pairs)  # the teacher must see each step's own inputs
    if cfg.teacher_cache == "on" and cfg.mixup > 0:
        raise ConfigError("distill.teacher_cache 'on' cannot be used with mixup (the teacher must see the mixed images)",
                          "set distill.teacher_cache: auto")
    cache_teacher = use_teacher and (cfg.teacher_cache == "on" or (cfg.teacher_cache == "auto" and not online))
    if cache_teacher and start_epoch < cfg.epochs and teacher_logits is not None:
        teacher_logits_t = torch.from_numpy(np.asarray(teacher_logits, np.float32))
    elif cache_teacher and start_epoch < cfg.epochs:
        t0 = time.time()
        # channels-last weights speed up the one-off teacher pass further; put back afterwards
        with frozen(teacher, channels_last=True):
            teacher_logits_t = torch.from_numpy(predict_logits(teacher, data.train.x))
        progress.log(f"distill: cached teacher logits for {n} samples in {time.time() - t0:.1f}s")

    x_all = data.train.x  # indexed per batch: a uint8 split (NormalizedArray) is normalised batch by batch
    y_all = torch.from_numpy(data.train.y)
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.epochs):
        student_ddp.train()
        objective.train()
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)  # same permutation on every rank
        perm = torch.randperm(n, generator=gen)[rank::world]
        sums: dict[str, float] = {}
        seen = 0
        with progress.bar(f"distill epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch) if rank == 0 else contextlib.nullcontext(progress._NullBar()) as b:
            for i in range(0, len(perm), cfg.batch_size):
                idx = perm[i : i + cfg.batch_size]
                xb, yb = torch.from_numpy(x_all[idx.numpy()]), y_all[idx]
                if cfg.augment:
                    xb, yb = augment(xb, yb)
                y_soft = None
                if cfg.mixup > 0:
                    xb, yb, y_soft = mixup_batch(xb, yb, cfg.mixup, data.num_classes)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, total_steps, warmup_steps, cfg.lr)
                zt = None
                t_feats = None
                if use_teacher:
                    if cache_teacher:
                        zt = teacher_logits_t[idx]
                    else:
                        with torch.no_grad():
                            zt = teacher(xb)
                            zt = zt[0] if isinstance(zt, (tuple, list)) and not whole else zt
                        t_feats = t_rec.pop() if t_rec else None
                zs = student_ddp(xb)
                zs = zs[0] if isinstance(zs, (tuple, list)) and not whole else zs
                s_feats = s_rec.pop() if s_rec else None
                loss, parts = objective(zs, zt, yb, (epoch + i / max(1, len(perm))) / cfg.epochs, s_feats, t_feats, y_soft)
                if not torch.isfinite(loss):
                    raise StageError(f"distillation loss became {float(loss)} at epoch {epoch + 1}",
                                     "lower --lr, or pick another --loss; finished epochs are kept")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema is not None:
                    ema.update(_unwrap(student_ddp))
                step += 1
                seen += len(idx)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                lv = loss.item()
                sums["total"] = sums.get("total", 0.0) + lv * len(idx)
                b.update(1, info=f"loss {lv:.3f}")
        rec = {"epoch": epoch + 1, **{f"loss_{k}": v / max(1, seen) for k, v in sums.items()},
               "lr_end": opt.param_groups[0]["lr"]}
        # scoring the val split can cost more than an epoch on a small transfer set: every `eval_interval` epochs
        if (epoch + 1) % cfg.eval_interval() == 0 or epoch + 1 == cfg.epochs:
            rec[f"val_{val_metric[0]}"] = val_metric[1](ema.module if ema is not None else student, data.val.x, data.val.y)
        rec["seconds"] = round(time.time() - t0, 2)
        history.append(rec)
        if rank == 0:
            vk = f"val_{val_metric[0]}"
            label = "top-1" if val_metric[0] == "top1" else val_metric[0]
            val = f" val {label} {rec[vk]:.4f}" if vk in rec else ""
            progress.log(f"distill: epoch {epoch + 1}/{cfg.epochs} loss {rec['loss_total']:.4f}{val} ({rec['seconds']:.1f}s)")
            if ckpt_dir is not None:
                with atomic_path(ckpt_dir / "last.pt") as tmp:
                    torch.save({"student": _unwrap(student_ddp).state_dict(), "objective": objective.state_dict(),
                                "optimizer": opt.state_dict(), "history": history, "epoch": epoch + 1,
                                **({"ema": ema.state_dict()} if ema is not None else {})}, tmp)
        if world > 1:
            dist.barrier()
    if s_rec:
        s_rec.close()
    if t_rec:
        t_rec.close()
    final = _unwrap(student_ddp)
    if ema is not None:  # the average is the result: copy it into the student the caller built
        final.load_state_dict(ema.module.state_dict())
    return DistResult(student=final.eval(), history=history, resumed_from_epoch=start_epoch)

