"""How the detect task's default student was chosen: val mAP after distillation and batch-1 INT8 speed per preset.

    python benchmarks/detection_students.py [--students det-xs det-s det-sp] [--seeds 0 1 2] [--data data/fmnist-det]

Accuracy: ``examples/demo-detect.yaml`` (the example teacher det-m, 30 epochs, the default loss: FCOS ground-truth term
+ class-score KD, box-aware shifts/flips, EMA) with ``distill.student`` set to each preset, one ``edgekd distill`` run
per student and seed; mAP@[.5:.95] of the distilled student on the pipeline's val split (never test: this chooses a
default). The first and last epoch's training loss are recorded to show each run trained.

Speed: each preset built as the task builds it for this teacher (strides 8 and 16; untrained — latency does not depend
on the weights, :mod:`edgekd.models.sizing`), quantized with the target profile's own PTQ (``auto``: this CPU's ONNX
Runtime profile; ``intel-cpu``: NNCF/OpenVINO) on 64 training canvases, and timed against the FP32 teacher at batch 1,
1 thread, in alternating rounds in one worker process per runtime. The pipeline's later per-target choices (input
layers in float, the INT8 gate) are not applied here: ``benchmarks/detection.py`` times what the pipeline ships.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, md_table, save
from detection_kd_terms import distilled_val_map

CONFIG = REPO / "examples" / "demo-detect.yaml"
TEACHER = REPO / "examples" / "fmnist_detector.pt2"
TARGETS = ("auto", "intel-cpu")


def distill(student: str, seed: int, data: Path, runs: Path) -> dict[str, Any]:
    return distilled_val_map(runs / f"{student}-seed{seed}", data, {"student": student, "seed": seed},
                             distill__seed=seed, distill__student=student)


def speed(students: list[str], data: Path, rounds: int) -> dict[str, Any]:
    """Batch-1 p50 (ms) of the FP32 teacher and each student in INT8 per target, alternating rounds, 1 thread."""
    import torch

    from edgekd.backends import get_backend
    from edgekd.benchmark.subprocess_worker import run_alternating
    from edgekd.data.detection import load_detection
    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.models.detector import build_detector
    from edgekd.models.loading import load_model
    from edgekd.models.zoo import count_params
    from edgekd.targets import resolve

    teacher = load_model(str(TEACHER))
    norm, strides = teacher.meta["normalize"], teacher.meta["strides"]
    ds = load_detection(data, channels=1, size=(96, 96), mean=tuple(norm["mean"]), std=tuple(norm["std"]))
    calib = np.asarray(ds.train.x[:64], np.float32)
    shape = (1, 1, 96, 96)
    out: dict[str, Any] = {"params": {}, "targets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher.write_onnx(work / "teacher.onnx", shape, 17, "legacy")
        for name in students:
            torch.manual_seed(0)
            model = build_detector(name, 1, teacher.meta.get("num_classes", 10), strides=strides).eval()
            out["params"][name] = count_params(model)
            export_onnx(model, shape, work / f"{name}.onnx", 17, "legacy")
        for target in TARGETS:
            profile = resolve(target)
            backend = get_backend(profile.backend)
            arts = [work / "teacher.onnx"]
            for name in students:
                arts.append(backend.quantize(work / f"{name}.onnx", work / f"{name}-{profile.name}", calib, profile).files["model"])
            settings = {"threads": 1, "input_shape": list(shape)}
            if profile.backend == "onnxruntime":
                settings["graph_optimization"] = "all"
            res = run_alternating(profile.backend, arts, settings, 20, 500, rounds)
            p50 = {k: [float(v) for v in r] for k, r in zip(["teacher fp32"] + students, res["p50_ms"])}
            med = {k: statistics.median(v) for k, v in p50.items()}
            out["targets"][profile.name] = {"backend": profile.backend, "p50_rounds_ms": p50, "p50_ms": med,
                                            "speedup_vs_teacher_fp32": {k: med["teacher fp32"] / med[k] for k in students}}
            print(profile.name, json.dumps({k: round(v, 4) for k, v in med.items()}), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(REPO / "data" / "fmnist-det"))
    ap.add_argument("--students", nargs="+", default=["det-xs", "det-s", "det-sp"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", default=str(REPO / "runs" / "bench-det-students"), help="where the runs go (reused)")
    a = ap.parse_args()
    data, runs = Path(a.data), Path(a.runs)
    rows = [distill(st, s, data, runs) for s in a.seeds for st in a.students]
    sp = speed(a.students, data, a.rounds)
    table = []
    for st in a.students:
        got = [r for r in rows if r["student"] == st]
        vals = [r["val_map"] for r in got]
        spread = f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else ""
        cells = [st, f"{sp['params'][st]:,}", f"{np.mean(vals):.3f}{spread}", ", ".join(f"{x:.3f}" for x in vals)]
        for t in sp["targets"].values():
            rr = t["p50_rounds_ms"][st]
            cells.append(f"{t['p50_ms'][st]:.3f} ({min(rr):.3f}–{max(rr):.3f}) · {t['speedup_vs_teacher_fp32'][st]:.2f}×")
        cells.append(", ".join(f"{r['loss_first_epoch']:.2f} → {r['loss_last_epoch']:.2f}" for r in got))
        table.append(cells)
    tnames = list(sp["targets"])
    teacher_ms = ", ".join(f"{n} {t['p50_ms']['teacher fp32']:.3f} ms" for n, t in sp["targets"].items())
    md = ("# Detection students: val mAP after distillation and INT8 speed (chooses the default student)\n\n"
          f"`examples/demo-detect.yaml` (teacher det-m, 30 epochs, labels + class KD) with each student, seeds "
          f"{', '.join(map(str, a.seeds))}; mAP@[.5:.95] on the pipeline's val split (never test). Speed: untrained "
          f"graphs in INT8 with each target's PTQ, batch 1, 1 thread, median of {a.rounds} alternating rounds (min–max) "
          f"and the speed-up over the FP32 teacher ({teacher_ms}).\n\n"
          + md_table(["student", "params", "val mAP", "per seed"] + [f"INT8 p50 ms, {n}" for n in tnames]
                     + ["training loss, epoch 1 → last"], table) + "\n")
    save("detection_students", {"config": str(CONFIG.relative_to(REPO)), "seeds": a.seeds, "results": rows,
                                "speed": sp}, md)


if __name__ == "__main__":
    main()
