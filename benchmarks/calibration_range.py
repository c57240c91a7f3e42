"""How the ONNX Runtime profiles' activation-range default was chosen: ORT calibration methods on held-out data.

    python benchmarks/calibration_range.py [--det-data data/fmnist-det]

For every ONNX Runtime profile (x86-cpu, x86-cpu-vnni, raspberry-pi-5) and each calibration method edgekd offers
(``minmax``: the min and max over all 300 calibration samples; ``mean-minmax``: the mean over samples of each
sample's min and max, NNCF's default for per-tensor activations; ``percentile``: ORT's 99.999th-percentile
histogram), the same 300 calibration images quantize:
- the CNN and ViT classifier teachers (``examples/fmnist_teacher``, ``fmnist_vit_teacher``), scored by top-1 on 5,000
  training images that are not among the calibration images (never the test split: this chooses a default);
- the detector teacher (``examples/fmnist_detector.pt2``), scored by mAP@[.5:.95] on the pipeline's own val split of
  the detection set (``examples/make_fmnist_detection.py``), calibrated as the pipeline calibrates (300 random
  training canvases).

Accuracy only (no timing: the range estimate changes scales, not kernels).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, md_table, save

from edgekd.exporters.onnx_export import export_onnx
from edgekd.exporters.parity import run_batched
from edgekd.quant.ptq import ort_quantize
from edgekd.runtimes import make_runner
from edgekd.targets import resolve

PROFILES = ("x86-cpu", "x86-cpu-vnni", "raspberry-pi-5")
METHODS = ("minmax", "mean-minmax", "percentile")


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return run_batched(make_runner("onnxruntime", path, {"graph_optimization": "all", "threads": 2}), x)


def classifiers(work: Path) -> list[dict[str, Any]]:
    from edgekd.data import load_dataset
    from edgekd.models.loading import load_model

    data = load_dataset("fashion-mnist", mean=[0.286], std=[0.353])
    idx = np.random.default_rng(0).permutation(len(data.train))
    cx, vx, vy = data.train.x[idx[:300]], data.train.x[idx[-5000:]], data.train.y[idx[-5000:]]
    rows = []
    for file, arch in (("fmnist_teacher.state_dict.pt", "resnet-l"), ("fmnist_vit_teacher.state_dict.pt", "vit-tiny")):
        m = load_model(str(REPO / "examples" / file), arch=arch, input_shape="1x1x28x28").module.eval()
        fp32 = work / f"{arch}.onnx"
        export_onnx(m, (1, 1, 28, 28), fp32, 17, "legacy")
        rows.append({"model": arch, "metric": "top-1 %", "profile": "-", "method": "fp32",
                     "value": 100 * float((outputs(fp32, vx).argmax(1) == vy).mean())})
        for prof in PROFILES:
            for method in METHODS:
                q = work / f"{arch}_{prof}_{method}.onnx"
                ort_quantize(fp32, q, cx, resolve(prof).onnxruntime.model_copy(update={"calibration_method": method}))
                rows.append({"model": arch, "metric": "top-1 %", "profile": prof, "method": method,
                             "value": 100 * float((outputs(q, vx).argmax(1) == vy).mean())})
                print(rows[-1], flush=True)
    return rows


def detector(work: Path, data: Path) -> list[dict[str, Any]]:
    import torch

    from edgekd.config import load_config_file
    from edgekd.context import load_real_data
    from edgekd.exporters.onnx_export import export_onnx as export
    from edgekd.models.batching import make_batch_dynamic
    from edgekd.models.loading import load_model
    from edgekd.quant.calibration import load_recipe
    from edgekd.tasks import get_task

    if not (data / "train").exists():
        subprocess.run([sys.executable, str(REPO / "examples" / "make_fmnist_detection.py"), "--out", str(data)], check=True)
    cfg = load_config_file(REPO / "examples" / "demo-detect.yaml", {"data": {"path": str(data)}})
    task = get_task("detect")
    lm = load_model(str(REPO / "examples" / "fmnist_detector.pt2"))
    info = task.probe(lm.module(torch.zeros(2, *lm.input_shape[1:])))
    ds = load_real_data(cfg, lm, lm.input_shape, task, info)
    task.prepare(lm.module, ds, info)
    cx, _ = task.calibration(ds, load_recipe(cfg.quantize.calibration), cfg.quantize.calibration_size)
    fp32 = work / "detector.onnx"
    export(lm.module, tuple(lm.input_shape), fp32, 17, "legacy", program=lm.program, output_names=["detections"])
    data_, _ = make_batch_dynamic(fp32.read_bytes())  # the .pt2 holds a batch-1 program, as the export stage does
    fp32.write_bytes(data_)
    ref = outputs(fp32, ds.val.x)
    rows = [{"model": "det-m (detector)", "metric": "mAP@[.5:.95] %", "profile": "-", "method": "fp32",
             "value": 100 * task.score(ref, ds.val.y, info)["map"]}]
    for prof in PROFILES:
        for method in METHODS:
            q = work / f"det_{prof}_{method}.onnx"
            ort_quantize(fp32, q, cx, resolve(prof).onnxruntime.model_copy(update={"calibration_method": method}))
            o = outputs(q, ds.val.x)
            rows.append({"model": "det-m (detector)", "metric": "mAP@[.5:.95] %", "profile": prof, "method": method,
                         "value": 100 * task.score(o, ds.val.y, info)["map"],
                         "agreement_map50": task.agreement(ref, o, info)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--det-data", default=str(REPO / "data" / "fmnist-det"))
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="calib-range-"))
    rows = classifiers(work) + detector(work, Path(a.det_data))
    table = []
    for model in dict.fromkeys(r["model"] for r in rows):
        sel = [r for r in rows if r["model"] == model]
        fp = next(r["value"] for r in sel if r["method"] == "fp32")
        for prof in PROFILES:
            table.append([model, sel[0]["metric"], prof, f"{fp:.2f}"]
                         + [f"{next(r['value'] for r in sel if r['profile'] == prof and r['method'] == m):.2f}"
                            for m in METHODS])
    md = ("# ONNX Runtime activation ranges: which calibration method (held-out data, never the test split)\n\n"
          "300 calibration images per model, the same for every method. Classifiers: top-1 on 5,000 training images "
          "outside the calibration set; detector: mAP@[.5:.95] on the pipeline's val split of the detection set.\n\n"
          + md_table(["model", "metric", "profile", "FP32", *METHODS], table)
          + "\n\n`minmax` = the min and max over all calibration samples; `mean-minmax` = the mean over samples of "
            "each sample's min and max (NNCF's default for per-tensor activations), with the layers that write the model's outputs kept in float; `percentile` = ORT's 99.999th "
            "percentile of a histogram (needs every activation of every sample in memory).\n")
    save("calibration_range", {"profiles": list(PROFILES), "methods": list(METHODS), "calibration_samples": 300,
                               "results": rows}, md)


if __name__ == "__main__":
    main()
