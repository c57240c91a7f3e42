"""One synthesis engine for the BN-inversion presets (Genie-D, DeepInversion, ZeroQ) and the DFAD entry point.

    from edgekd.data.synth import synthesize
    res = synthesize(teacher, n=1024, input_shape=(1, 28, 28), method="genie", seed=0)
    res.x   # (1024, 1, 28, 28) float32 in the teacher's normalised input space
    res.y   # the teacher's top-1 label for each image

Batches are independent (each has its own seed, derived from ``seed`` and the batch index), so

- the result is deterministic for a seed and does not depend on how many processes made it;
- under ``torchrun`` rank r makes batches r, r+W, r+2W, … and the shards are gathered;
- with ``work_dir`` each finished batch is saved atomically, and a re-run (after a crash, Ctrl-C or a NaN stop)
  resumes from the finished ones.

Per batch, the pixels x (DeepInversion, ZeroQ) or a fresh generator G and its latents z (Genie) are optimised with
Adam against the preset's loss; the teacher stays frozen in eval mode, read through forward hooks only.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgekd import progress
from edgekd.data.synth.adi import competition_loss, default_student, distil_on_synthetic
from edgekd.data.synth.generator import Generator
from edgekd.data.synth.hooks import bn_layers, bn_stats, swing_convolution
from edgekd.data.synth.losses import bn_matching_loss, input_prior
from edgekd.data.synth.presets import SynthPreset, get_preset
from edgekd.data.synth.priors import jitter_flip, total_variation
from edgekd.errors import DataError, StageError
from edgekd.models.freeze import frozen
from edgekd.fileio import atomic_path, sha256_json


@dataclass
class SynthResult:
    x: np.ndarray
    y: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def choose_method(teacher: nn.Module, method: str, transfer: bool = False) -> str:
    """Resolve ``auto``; a BN preset on a teacher without BatchNorm, or on a TorchScript teacher (no hooks), is an
    error that names DFAD.

    ``auto`` with BatchNorm layers (reachable by hooks): Genie-D for a calibration set (the spec's default, algorithms.md
    §2.8), Adaptive DeepInversion when the set is also the distillation transfer set (``transfer``): DeepInversion's
    CE term toward uniformly sampled labels spreads the images over the classes, and ADI's competition term puts them
    where the student still disagrees with the teacher. On the demo CNN (benchmarks/results/datafree.md, section C,
    1024 images, 3 seeds, function matching 300 epochs) ADI 85.5 %, DeepInversion 84.3 %, Genie 74.9 % vs real 90.1 %,
    ADI better than DeepInversion on each seed at about the same cost; DeepInversion calibrates as well as real data
    (section A). Without BatchNorm (or hooks): DFAD, and DFAD with the class-balance term (``dfad-balanced``) for a
    transfer set: ViT → resnet-s, 300 rounds, 58.9 ± 4.9 % vs DFAD's 50.5 ± 1.1 % on the real test set, better on
    each of 3 seeds (section C).
    """
    scripted = isinstance(teacher, torch.jit.ScriptModule)
    has_bn = bool(bn_layers(teacher)) and not scripted
    method = method.lower()
    if method == "auto":
        if has_bn:
            return "adi" if transfer else "genie"
        return "dfad-balanced" if transfer else "dfad"
    preset = get_preset(method)
    if preset.requires_bn and scripted:
        raise DataError(f"synthesis method {method!r} reads BatchNorm inputs through forward hooks, which TorchScript "
                        "models do not support", "use dfad (--synth dfad for compress, --method dfad for edgekd synth), or give "
                        "the teacher as .pt2 or state_dict + --arch")
    if preset.requires_bn and not has_bn:
        raise DataError(f"synthesis method {method!r} matches BatchNorm statistics, but the teacher has no BatchNorm layer",
                        "use dfad (adversarial, needs no BatchNorm): --synth dfad for compress, --method dfad for "
                        "edgekd synth; or pass real data with --data")
    return method


def teacher_fingerprint(model: nn.Module) -> str:
    """sha256 of every tensor in the state dict (names and bytes): identifies the teacher for resumable shards."""
    import hashlib

    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def valid_range(mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The normalised-input range [(0 − mean)/std, (1 − mean)/std] per channel, or None when the preprocessing is
    unknown."""
    if mean is None or std is None:
        return None
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    return (0 - m) / s, (1 - m) / s


def batch_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7_919) % (2**31 - 1)


def _lr_cosine(it: int, total: int, warmup: int, base: float) -> float:
    if warmup and it < warmup:
        return base * (it + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (it - warmup) / max(1, total - warmup)))


def _jitter_px(preset: SynthPreset, h: int) -> int:
    if preset.jitter is None:
        return 0
    if preset.jitter < 0:  # ±30 px at 224 in DeepInversion, ±2 px at 32 for CIFAR: about size/14
        return max(1, h // 14)
    return preset.jitter


def _balanced_labels(b: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    y = torch.arange(b) % num_classes
    return y[torch.randperm(b, generator=gen)]


def invert_batch(teacher: nn.Module, preset: SynthPreset, b: int, input_shape: Sequence[int], num_classes: int, seed: int,
                 valid_range: tuple[torch.Tensor, torch.Tensor] | None = None,
                 on_step: Callable[[int, float], None] | None = None,
                 student: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Synthesize one batch of ``b`` images with a BN-inversion preset. Returns (x, stats).

    With ``preset.adi_weight`` and a ``student`` (Adaptive DeepInversion), the loss gains
    λ_ADI·(1 − JS(S(x̂), T(x̂))); the student is frozen (eval mode, no parameter gradients) during the batch."""
    adi = bool(preset.adi_weight) and student is not None
    with frozen(teacher), (frozen(student) if adi else contextlib.nullcontext()):
        return _invert_batch(teacher, preset, b, input_shape, num_classes, seed, valid_range, on_step,
                             student if adi else None)


def _invert_batch(teacher: nn.Module, preset: SynthPreset, b: int, input_shape: Sequence[int], num_classes: int, seed: int,
                  valid_range: tuple[torch.Tensor, torch.Tensor] | None, on_step: Callable[[int, float], None] | None,
                  student: nn.Module | None) -> tuple[torch.Tensor, dict[str, Any]]:
    c, h, w = input_shape
    adi = student is not None
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # generator weight init
        if preset.variables == "generator":
            G: nn.Module | None = Generator(preset.nz, c, h, w, genie=True)
            z = torch.randn(b, preset.nz, generator=gen).requires_grad_(True)
            opt_z = torch.optim.Adam([z], lr=preset.lr, betas=preset.betas)
            opt_g = torch.optim.Adam(G.parameters(), lr=preset.lr_generator, betas=preset.betas)
            sched_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, gamma=0.95)
            opts = [opt_z, opt_g]
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt_z, patience=100, min_lr=1e-4)
        else:
            G = None
            x = torch.randn(b, c, h, w, generator=gen).requires_grad_(True)
            opt_x = torch.optim.Adam([x], lr=preset.lr, betas=preset.betas)
            opts = [opt_x]
            plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt_x, patience=100, min_lr=1e-4)
                       if preset.scheduler == "plateau" else None)
        y = _balanced_labels(b, num_classes, gen) if preset.ce_weight else None
        jitter = _jitter_px(preset, h)
        first_loss = last_loss = float("nan")
        with bn_stats(teacher, preset.stat) as hook:
            swing = swing_convolution(teacher, gen) if preset.swing else contextlib.nullcontext()
            with swing:
                for it in range(preset.iterations):
                    if preset.scheduler == "cosine":
                        for o in opts:
                            for g in o.param_groups:
                                g["lr"] = _lr_cosine(it, preset.iterations, preset.warmup, preset.lr)
                    for o in opts:
                        o.zero_grad(set_to_none=True)
                    img = G(z) if G is not None else x
                    inp = jitter_flip(img, jitter, preset.flip, gen) if (jitter or preset.flip) else img
                    hook.reset()
                    logits = teacher(inp.contiguous(memory_format=torch.channels_last) if inp.dim() == 4 else inp)
                    loss, bn_plain = bn_matching_loss(hook, preset.match, preset.first_bn_multiplier)
                    loss = preset.bn_weight * loss
                    if preset.input_prior:
                        loss = loss + input_prior(img)
                    if y is not None:
                        loss = loss + preset.ce_weight * F.cross_entropy(logits, y)
                    if adi:
                        s_in = inp.contiguous(memory_format=torch.channels_last) if inp.dim() == 4 else inp
                        loss = loss + preset.adi_weight * competition_loss(student(s_in), logits)
                    if preset.tv_l2 or preset.tv_l1:
                        tv2, tv1 = total_variation(inp)
                        loss = loss + preset.tv_l2 * tv2 + preset.tv_l1 * tv1
                    if preset.l2:
                        loss = loss + preset.l2 * inp.flatten(1).norm(dim=1).mean()
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise StageError(f"synthesis loss became {value} at iteration {it} of a {preset.name} batch",
                                         "lower the learning rate (--synth-lr) or the iterations; finished batches are kept")
                    if it == 0:
                        first_loss = float(bn_plain)
                    last_loss = float(bn_plain)
                    loss.backward()
                    for o in opts:
                        o.step()
                    if plateau is not None:
                        plateau.step(value)
                    if G is not None and (it + 1) % 100 == 0:
                        sched_g.step()
                    if preset.clip and valid_range is not None and G is None:
                        with torch.no_grad():
                            x.data = torch.max(torch.min(x, valid_range[1]), valid_range[0])
                    if on_step is not None:
                        on_step(it, value)
        with torch.no_grad():
            out = (G(z) if G is not None else x).detach().clone()
    return out, {"bn_loss_first": first_loss, "bn_loss_last": last_loss}


def synthesize(teacher: nn.Module, n: int, input_shape: Sequence[int], num_classes: int, *, method: str = "auto",
               seed: int = 0, valid_range: tuple[Sequence[float], Sequence[float]] | None = None,
               work_dir: str | Path | None = None, student: nn.Module | None = None, desc: str = "synth",
               **overrides: Any) -> SynthResult:
    """Make ``n`` images the teacher "recognises", with no real data.

    ``input_shape`` is (C, H, W); ``valid_range`` = (lo, hi) per channel in the teacher's normalised input space
    (pixels are clipped to it where the preset says so); ``overrides`` replace preset fields (``iterations``,
    ``batch_size``, ``lr`` …). ``method="dfad"`` trains ``student`` (or a small zoo CNN) adversarially and samples
    the final generator; ``method="adi"`` (Adaptive DeepInversion) alternates batches with KD of ``student`` (or the
    same small zoo CNN) on the images made so far.
    """
    if n < 1:
        raise DataError(f"asked for {n} synthetic images", "pass --n 1 or more")
    if len(input_shape) != 3:
        raise DataError(f"data-free synthesis makes images (C, H, W); this model takes inputs of shape {tuple(input_shape)}",
                        "pass real data with --data")
    # The teacher is used frozen and handed back unchanged: a student built from the same object later must train.
    # oneDNN runs CPU convolutions (and their input gradients) ~1.5x faster channels-last (measured on the demo
    # teacher at batch 128); the results are the same.
    with frozen(teacher, channels_last=True):
        return _synthesize(teacher, n, (int(input_shape[0]), int(input_shape[1]), int(input_shape[2])), num_classes,
                           method, seed, valid_range, work_dir, student, desc, overrides)


def _synthesize(teacher: nn.Module, n: int, input_shape: tuple[int, int, int], num_classes: int, method: str, seed: int,
                valid_range: tuple[Sequence[float], Sequence[float]] | None, work_dir: str | Path | None,
                student: nn.Module | None, desc: str, overrides: dict[str, Any]) -> SynthResult:
    name = choose_method(teacher, method)
    preset = get_preset(name).with_overrides(**overrides)
    c, h, w = (int(v) for v in input_shape)
    vr = None
    if valid_range is not None:
        vr = (torch.tensor(valid_range[0], dtype=torch.float32).view(1, -1, 1, 1),
              torch.tensor(valid_range[1], dtype=torch.float32).view(1, -1, 1, 1))
    t0 = time.time()
    if preset.variables == "adversarial":
        from edgekd.data.synth.dfad import sample_dfad

        x, info = sample_dfad(teacher, student, preset, n, (c, h, w), num_classes, seed, desc=desc)
        per_batch: list[dict[str, Any]] = [info]
    else:
        if preset.adi_weight and student is None:
            student = default_student(c, num_classes, seed).to(memory_format=torch.channels_last)
        x, per_batch = _invert_all(teacher, preset, n, (c, h, w), num_classes, seed, vr, work_dir, desc,
                                   student if preset.adi_weight else None)
    seconds = time.time() - t0
    with torch.no_grad():
        logits = torch.cat([teacher(x[i : i + 256]) for i in range(0, len(x), 256)])
    y = logits.argmax(1)
    conf = F.softmax(logits, 1).max(1).values
    xs = x.numpy().astype(np.float32)
    meta = {
        "method": name, "preset": preset.as_dict(), "n": int(n), "seed": int(seed), "input_shape": [c, h, w],
        "seconds": round(seconds, 2), "images_per_second": round(n / max(seconds, 1e-9), 2),
        "seconds_per_1000_images": round(1000 * seconds / n, 2),
        "class_histogram": np.bincount(y.numpy(), minlength=num_classes).tolist(),
        "teacher_confidence_mean": float(conf.mean()), "batches": per_batch,
        "finite": bool(np.isfinite(xs).all()), "reference": preset.reference,
    }
    return SynthResult(xs, y.numpy().astype(np.int64), meta)


def _invert_all(teacher: nn.Module, preset: SynthPreset, n: int, shape: tuple[int, int, int], num_classes: int, seed: int,
                vr: tuple[torch.Tensor, torch.Tensor] | None, work_dir: str | Path | None, desc: str,
                student: nn.Module | None = None) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Make every batch (resuming finished ones from ``work_dir``). Without ADI the batches are independent and
    torchrun ranks split them; with ADI (``student`` given) each batch is followed by KD of the student on everything
    made so far, so the batches are made in turn."""
    from edgekd.distributed import dist_info

    rank, world = dist_info()
    bs = preset.batch_size
    sizes = [min(bs, n - i) for i in range(0, n, bs)]
    key = sha256_json({"preset": preset.as_dict(), "shape": shape, "k": num_classes, "seed": seed,
                       "teacher": teacher_fingerprint(teacher),
                       "adi_student": teacher_fingerprint(student) if student is not None else None})[:16]
    wd = Path(work_dir) if work_dir else None
    if wd:
        wd.mkdir(parents=True, exist_ok=True)
    adi = student is not None
    mine = [i for i in range(len(sizes)) if i % world == rank]
    shards: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
    todo = []
    for i in mine:
        f = wd / f"batch-{key}-{i:05d}.npz" if wd else None
        if f is not None and f.exists():
            with np.load(f, allow_pickle=False) as z:
                shards[i] = (z["x"], {"bn_loss_first": float(z["first"]), "bn_loss_last": float(z["last"]), "resumed": True})
        else:
            todo.append(i)
    total_steps = sum(preset.iterations for _ in todo)
    if shards:
        progress.log(f"{desc}: resuming, {len(shards)} of {len(mine)} batches already made")
    done_images = 0
    t0 = time.time()
    with progress.bar(f"{desc} ({preset.name})", total_steps) as bar:
        # ADI: every rank walks every batch (a round is one batch, made by rank i % W, then shared and learnt from)
        order = todo if not adi else list(range(len(sizes)))
        for i in order:
            if i % world == rank and i not in shards:
                def step(it: int, loss: float, _b: int = sizes[i]) -> None:
                    if it % 10 == 9 or it == preset.iterations - 1:
                        rate = (done_images + _b * (it + 1) / preset.iterations) / max(time.time() - t0, 1e-9)
                        bar.update(10 if it % 10 == 9 else (it + 1) % 10, info=f"loss {loss:.3g}  {rate:.1f} img/s")

                xb, stats = invert_batch(teacher, preset, sizes[i], shape, num_classes, batch_seed(seed, i), vr, step,
                                         student)
                done_images += sizes[i]
                shards[i] = (xb.numpy(), stats)
                if wd:
                    with atomic_path(wd / f"batch-{key}-{i:05d}.npz") as tmp:
                        with open(tmp, "wb") as fh:
                            np.savez(fh, x=xb.numpy(), first=stats["bn_loss_first"], last=stats["bn_loss_last"])
            if adi:  # a resumed batch replays its KD round too, so the student is the one the next batch met
                _adi_round(teacher, student, preset, shards, i, rank, world, seed, len(sizes))
    if world > 1 and not adi:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, shards)
        shards = {k: v for part in gathered for k, v in part.items()}
    x = torch.from_numpy(np.concatenate([shards[i][0] for i in range(len(sizes))]))
    return x, [shards[i][1] for i in range(len(sizes))]


def _adi_round(teacher: nn.Module, student: nn.Module, preset: SynthPreset, shards: dict[int, tuple[np.ndarray, dict[str, Any]]],
               i: int, rank: int, world: int, seed: int, n_batches: int) -> None:
    """End of ADI round ``i`` (batch i, made by rank i % W): share it with every rank, then distil the student on
    batches 0..i (same data and seed on every rank, so the ranks' students, and the data, match a single process's).

    ADI is sequential (batch i+1 competes against the student that learnt from batch i), so under torchrun the ranks
    take turns instead of working in parallel: the result stays independent of the number of processes."""
    if world > 1:
        import torch.distributed as dist

        box: list[Any] = [shards.get(i) if i % world == rank else None]
        dist.broadcast_object_list(box, src=i % world)
        shards[i] = box[0]
    if i + 1 >= n_batches:  # the last round: no batch follows, so the student needs no more training
        return
    x = torch.from_numpy(np.concatenate([shards[k][0] for k in range(i + 1)]))
    loss = distil_on_synthetic(teacher, student, x, preset.adi_kd_epochs, batch_seed(seed, i) + 1,
                               max_steps=preset.adi_kd_max_steps)
    shards[i][1]["adi_student_kd_loss"] = loss
