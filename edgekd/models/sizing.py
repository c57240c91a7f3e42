"""Students sized for the device (issue #19): ``distill.student: auto`` (``--student auto``) picks the zoo student by
measurement on the run's first target, before any training.

1. Candidates: the zoo's CNN presets (:data:`CANDIDATES`), built for the teacher's input channels and outputs, their
   stem stride scaled to the input: ``stem × 2^round(log2(side / 28))`` for inputs larger than the 28-px images the
   presets were designed at (a 224-px input gets 8× more stem stride, so the widest stage runs at 14–28 px). For a
   detector (the ``detect`` task): the ``det-*`` presets, with the teacher's strides and output conventions. For an
   input that is not an image (audio, sequences): the 1-D presets of :data:`CANDIDATES_1D`, unscaled.
2. Each candidate (untrained: latency does not depend on the weights) and the teacher are exported to ONNX, the
   candidates also quantized with the target backend's own PTQ when the profile ships INT8, and all of them timed at
   batch 1 against each other in alternating rounds in one worker process (:mod:`edgekd.benchmark.alternating`).
3. A candidate's expected speed-up is teacher FP32 p50 / its best p50 (FP32 or INT8). The choice is the candidate
   with the most parameters (capacity: the best predictor of distilled accuracy available before training) among
   those meeting ``distill.speed_goal`` (default 3×); when none does, the fastest, with a warning. Everything
   measured goes to ``01-distill/student_choice.json`` and the report says why.

Why not train every candidate: distillation is the expensive stage (minutes to hours); timing untrained graphs costs
seconds, and the ranking by size among the ones fast enough is what a user would do by hand.
"""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path
from typing import Any

#: zoo presets tried by ``--student auto``, smallest first
CANDIDATES = ("resnet-xs", "mobilenet-xs", "resnet-s", "mobilenet-s", "mobilenet-m", "resnet-m", "resnet-l")
#: for inputs that are not images ((L,) or (C, L)): the 1-D presets, at their own stem strides
CANDIDATES_1D = ("conv1d-xs", "conv1d-s", "conv1d-m", "conv1d-l")


def stem_scale(input_shape: tuple[int, ...]) -> int:
    """The factor the zoo's stem stride is multiplied by for this input: 1 up to 40 px, then 2^round(log2(side/28))."""
    side = min(int(input_shape[2]), int(input_shape[3])) if len(input_shape) == 4 else 28
    return 1 if side < 40 else 2 ** max(0, round(math.log2(side / 28)))


def choose_student(ctx, profile, work: Path) -> dict[str, Any]:  # noqa: ANN001
    """Measure :data:`CANDIDATES` against the teacher on ``profile`` and return the choice and every measurement:
    ``{"student", "stem_stride", "reason", "candidates": [...], "teacher_p50_ms", ...}``."""
    import time

    import torch

    from edgekd import progress
    from edgekd.backends import get_backend
    from edgekd.benchmark.subprocess_worker import run_alternating
    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.models.detector import DETECTORS
    from edgekd.models.zoo import PRESETS, count_params
    from edgekd.quant.calibration import load_recipe
    from edgekd.stages.bench import timing_settings

    t0 = time.perf_counter()
    cfg = ctx.cfg.distill
    task = ctx.task.base
    shape = tuple(ctx.input_shape)
    work.mkdir(parents=True, exist_ok=True)
    backend = get_backend(profile.backend)
    timed_on = profile.backend if backend.can_time(profile) else "onnxruntime"
    names = task.output_names(ctx.info)
    teacher = work / "teacher.onnx"
    ctx.teacher.write_onnx(teacher, shape, ctx.cfg.export.opset, ctx.cfg.export.exporter, names)
    int8 = profile.default_precision == "int8" and timed_on == profile.backend
    calib_x = None
    if int8:
        calib_x, _ = task.calibration(ctx.data, load_recipe("small"), 64)
    from edgekd.data.arrays import is_image_shape

    detect = task.name == "detect"  # detector students keep the teacher's strides: no stem scaling
    image = is_image_shape(shape[1:])
    candidates = tuple(DETECTORS.names()) if detect else CANDIDATES if image else CANDIDATES_1D
    scale = stem_scale(shape) if image and not detect else 1
    rows: list[dict[str, Any]] = []
    artifacts: list[Path] = [teacher]
    with progress.bar("distill: sizing the student (candidates exported and timed)", len(candidates)) as bar:
        for name in candidates:
            stem = PRESETS[name].stem_stride * scale if image and not detect else None
            torch.manual_seed(0)
            model, _ = task.build_student(name, shape, ctx.info, None, None, stem_stride=stem if scale > 1 else None)
            model.eval()
            path = work / f"{name}.onnx"
            export_onnx(model, shape, path, ctx.cfg.export.opset, "legacy", output_names=names)
            row: dict[str, Any] = {"name": name, "stem_stride": stem, "params": count_params(model), "fp32": str(path)}
            artifacts.append(path)
            if int8:
                with progress.muted():
                    q = backend.quantize(path, work / f"{name}-int8", calib_x, profile)
                row["int8"] = str(q.files["model"])
                artifacts.append(q.files["model"])
            rows.append(row)
            bar.update(1, info=name)
    settings = timing_settings(ctx, profile) if timed_on == profile.backend else \
        {"threads": profile.threads, "graph_optimization": "all", "input_shape": list(shape)}
    settings = {**settings, "warmup_seconds": min(0.5, float(settings.get("warmup_seconds", 0.5))), "max_seconds": 3.0}
    progress.log(f"distill: timing the teacher and {len(rows)} candidate students on {timed_on} ({profile.name}), "
                 f"3 alternating rounds")
    res = run_alternating(timed_on, artifacts, settings, 10, 200, 3)
    p50 = {str(a): statistics.median(r) for a, r in zip(artifacts, res["p50_ms"])}
    t_ms = p50[str(teacher)]
    for row in rows:
        row["fp32_p50_ms"] = p50[row["fp32"]]
        row["int8_p50_ms"] = p50.get(row.get("int8", ""))
        best = min(v for v in (row["fp32_p50_ms"], row["int8_p50_ms"]) if v is not None)
        row["best_p50_ms"], row["speedup"] = best, t_ms / best
        row["meets_goal"] = row["speedup"] >= cfg.speed_goal
        row.pop("fp32"), row.pop("int8", None)
    ok = [r for r in rows if r["meets_goal"]]
    if ok:
        pick = max(ok, key=lambda r: r["params"])
        reason = (f"the largest candidate expected ≥ {cfg.speed_goal:g}× faster than the teacher: {pick['speedup']:.1f}× "
                  f"({pick['best_p50_ms']:.3f} vs {t_ms:.3f} ms, {pick['params']:,} params)")
    else:
        pick = max(rows, key=lambda r: r["speedup"])
        reason = (f"no candidate is expected {cfg.speed_goal:g}× faster than the teacher; the fastest is "
                  f"{pick['speedup']:.1f}× ({pick['best_p50_ms']:.3f} vs {t_ms:.3f} ms)")
        progress.warn(f"distill: {reason}; pass --student to choose another")
    shutil.rmtree(work, ignore_errors=True)
    return {"student": pick["name"], "stem_stride": pick["stem_stride"] if scale > 1 else None, "reason": reason,
            "speed_goal": cfg.speed_goal, "teacher_p50_ms": t_ms, "timed_on": timed_on, "profile": profile.name,
            "precisions_timed": ["fp32", "int8"] if int8 else ["fp32"], "stem_scale": scale,
            "threads": settings.get("threads"), "candidates": rows, "seconds": round(time.perf_counter() - t0, 1),
            "note": None if timed_on == profile.backend else
            f"{profile.backend} cannot be timed here: candidates timed in FP32 on ONNX Runtime as a proxy"}
