"""edgekd's INT8 artifacts vs the peers' defaults, side by side in one run on this machine (issue #5).

    python benchmarks/peers.py [--rounds 3] [--threads 1 2]

Peers, run with their documented defaults on the same FP32 ONNX and the same 300 real calibration images:
- ONNX Runtime ``quantize_static(model, out, reader)`` (QDQ, per-tensor weights, S8S8, MinMax);
- NNCF ``nncf.quantize(ov_model, dataset)`` (preset PERFORMANCE, fast bias correction), run on OpenVINO.

edgekd, two ways:
- *same network*: the teacher quantized with the target profile's settings (x86-cpu: per-channel U8S8 +
  reduce_range, for CPUs without VNNI; x86-cpu-vnni: per-channel U8S8 with full 8-bit weights; intel-cpu: NNCF
  with full bias correction) — compares quantization quality and speed alone;
- *pipeline*: the distilled INT8 student of the demo run (examples/demo.yaml) — what ``edgekd compress`` ships —
  and, when ``--accurate-run`` exists, that of examples/accurate.yaml (a student with the teacher's width and a
  stride-2 stem: the teacher's parameters at about a quarter of its multiply-adds).

Models: the demo CNN teacher (resnet-l) and the small ViT teacher (vit-tiny). Top-1 on the real 10k test images;
latency p50 at batch 1, median over ``--rounds`` alternating rounds, each artifact in a fresh worker process.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from _common import REPO, md_table, save

from edgekd.benchmark.subprocess_worker import run_worker
from edgekd.data import load_dataset
from edgekd.exporters.onnx_export import export_onnx
from edgekd.exporters.parity import run_batched
from edgekd.models.loading import load_model
from edgekd.quant.ptq import nncf_quantize_openvino, ort_quantize
from edgekd.runtimes import make_runner
from edgekd.targets import resolve

MEAN, STD = [0.286], [0.353]


def ort_default(fp32: Path, out: Path, cx: np.ndarray) -> None:
    """ONNX Runtime's quantize_static with every default (the documented quick start)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    name = onnx.load(str(fp32), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{name: cx[i : i + 1]} for i in range(len(cx))])

        def get_next(self):  # noqa: ANN201
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader())


def nncf_default(fp32: Path, out_xml: Path, cx: np.ndarray) -> None:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    q = nncf.quantize(model, nncf.Dataset([cx[i : i + 1] for i in range(len(cx))]))
    ov.save_model(q, str(out_xml), compress_to_fp16=False)


def mcnemar_exact(ours: np.ndarray, peer: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Paired exact McNemar test on the same test images: b = we are right where the peer is wrong, c = the reverse;
    two-sided p = min(1, 2·P[Bin(b + c, ½) ≤ min(b, c)]). A top-1 gap backed by few discordant images has a large p."""
    r1, r2 = ours == y, peer == y
    b, c = int((r1 & ~r2).sum()), int((~r1 & r2).sum())
    n, k = b + c, min(b, c)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    return {"ours_only_right": b, "peer_only_right": c, "p_value": p}


def predictions(backend: str, path: Path, x: np.ndarray) -> np.ndarray:
    """Top-1 per test image, in-process (the same runtime settings as the timed worker)."""
    settings = {"graph_optimization": "all", "threads": 2} if backend == "onnxruntime" else {"threads": 2}
    return run_batched(make_runner(backend, path, settings), x).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--demo-run", default=str(REPO / "runs" / "demo"))
    ap.add_argument("--accurate-run", default=str(REPO / "runs" / "accurate"),
                    help="a pipeline run of examples/accurate.yaml (skipped when absent)")
    a = ap.parse_args()
    data = load_dataset("fashion-mnist", mean=MEAN, std=STD)
    rng = np.random.default_rng(0)
    cx = data.train.x[rng.choice(len(data.train), 300, replace=False)]
    work = Path(tempfile.mkdtemp(prefix="peers-"))
    eval_npz = work / "eval.npz"
    np.savez(eval_npz, x=data.test.x, y=data.test.y)
    x86, vnni, intel = resolve("x86-cpu"), resolve("x86-cpu-vnni"), resolve("intel-cpu")
    arts: dict[str, list[tuple[str, str, Path]]] = {}
    for name, file, arch in (("cnn (resnet-l)", "fmnist_teacher.state_dict.pt", "resnet-l"),
                             ("vit (vit-tiny)", "fmnist_vit_teacher.state_dict.pt", "vit-tiny")):
        m = load_model(str(REPO / "examples" / file), arch=arch, input_shape="1x1x28x28").module.eval()
        d = work / arch
        d.mkdir()
        fp32 = d / "fp32.onnx"
        export_onnx(m, (1, 1, 28, 28), fp32, 17, "legacy")
        ort_default(fp32, d / "ort_default.onnx", cx)
        ort_quantize(fp32, d / "edgekd_ort.onnx", cx, x86.onnxruntime)
        ort_quantize(fp32, d / "edgekd_ort_vnni.onnx", cx, vnni.onnxruntime)
        nncf_default(fp32, d / "nncf_default.xml", cx)
        nncf_quantize_openvino(fp32, d / "edgekd_ov.xml", cx, intel.openvino)
        arts[name] = [("onnxruntime", "FP32 (reference)", fp32), ("onnxruntime", "peer: ORT quantize_static defaults", d / "ort_default.onnx"),
                      ("onnxruntime", "edgekd x86-cpu, same network", d / "edgekd_ort.onnx"),
                      ("onnxruntime", "edgekd x86-cpu-vnni, same network", d / "edgekd_ort_vnni.onnx"),
                      ("openvino", "FP32 (reference)", fp32), ("openvino", "peer: nncf.quantize defaults", d / "nncf_default.xml"),
                      ("openvino", "edgekd intel-cpu, same network", d / "edgekd_ov.xml")]
    demo = Path(a.demo_run)
    if (demo / "04-lower" / "x86-cpu" / "model.onnx").exists():
        arts["cnn (resnet-l)"] += [("onnxruntime", "edgekd pipeline: distilled student", demo / "04-lower/x86-cpu/model.onnx"),
                                   ("openvino", "edgekd pipeline: distilled student", demo / "04-lower/intel-cpu/model.xml")]
    acc = Path(a.accurate_run)
    if (acc / "04-lower" / "x86-cpu" / "model.onnx").exists():
        label = "edgekd pipeline: accurate.yaml student"
        arts["cnn (resnet-l)"] += [("onnxruntime", label, acc / "04-lower/x86-cpu/model.onnx"),
                                   ("openvino", label, acc / "04-lower/intel-cpu/model.xml")]
    preds = {(model, i): predictions(b, p, data.test.x) for model, items in arts.items() for i, (b, _, p) in enumerate(items)}
    results: list[dict[str, Any]] = []
    for model, items in arts.items():
        for threads in a.threads:
            p50: dict[int, list[float]] = {i: [] for i in range(len(items))}
            top1: dict[int, float] = {}
            for r in range(a.rounds):
                order = list(range(len(items))) if r % 2 == 0 else list(reversed(range(len(items))))
                for i in order:
                    backend, _, path = items[i]
                    settings = {"threads": threads, "input_shape": [1, 1, 28, 28], "warmup_seconds": 1.0, "max_seconds": 20,
                                "graph_optimization": "all", "device": "CPU", "performance_hint": "LATENCY",
                                "inference_precision": "f32"}
                    res = run_worker(backend, path, eval_npz if i not in top1 else None, settings, 200, a.iterations, [1], None)
                    p50[i].append(res["latency"]["1"]["p50_ms"])
                    if "accuracy" in res:
                        top1.setdefault(i, res["accuracy"]["top1"])
            for i, (backend, label, path) in enumerate(items):
                results.append({"model": model, "runtime": backend, "artifact": label, "threads": threads, "top1": top1[i],
                                "index": i,
                                "p50_ms": statistics.median(p50[i]), "p50_rounds_ms": p50[i]})
    rows = []
    for r in results:
        ref = next(x for x in results if x["model"] == r["model"] and x["runtime"] == r["runtime"] and x["threads"] == r["threads"]
                   and x["artifact"].startswith("FP32"))
        rows.append([r["model"], r["runtime"], r["threads"], r["artifact"], f"{100 * r['top1']:.2f}", f"{r['p50_ms']:.3f}",
                     f"{ref['p50_ms'] / r['p50_ms']:.2f}×"])
    verdict = []
    for model in arts:
        for threads in a.threads:
            for rt in ("onnxruntime", "openvino"):
                sel = [r for r in results if r["model"] == model and r["threads"] == threads and r["runtime"] == rt]
                peers = [r for r in sel if r["artifact"].startswith("peer")]
                ours = [r for r in sel if r["artifact"].startswith("edgekd")]
                if not peers or not ours:
                    continue
                fastest = min(p["p50_ms"] for p in peers)
                best_peer = max(peers, key=lambda p: p["top1"])
                best = best_peer["top1"]
                for o in ours:
                    t = mcnemar_exact(preds[(model, o["index"])], preds[(model, best_peer["index"])], data.test.y)
                    o["vs_best_peer"] = t
                    verdict.append([model, rt, threads, o["artifact"], "yes" if o["p50_ms"] < fastest else "no",
                                    "yes" if o["top1"] >= best - 1e-9 else f"no ({100 * (o['top1'] - best):+.2f} pt)",
                                    f"{t['ours_only_right']} / {t['peer_only_right']}, p = {t['p_value']:.2f}"])
    md = ("# edgekd INT8 vs peer defaults (Fashion-MNIST, 10k test images; batch-1 p50, median of "
          f"{a.rounds} alternating rounds)\n\n"
          + md_table(["model", "runtime", "threads", "artifact", "top-1 %", "p50 ms", "speed-up vs FP32"], rows)
          + "\n\n## Goal: faster than the fastest peer and as accurate as the most accurate\n\n"
          + md_table(["model", "runtime", "threads", "edgekd artifact", "faster than fastest peer", "≥ most accurate peer",
                      "paired: images only we / only the peer get right, exact McNemar p"], verdict)
          + "\n\nThe last column compares per-image predictions with the most accurate peer on the same 10k images; "
          "p < 0.05 marks a top-1 difference that the test set supports, a larger p one that it does not.\n")
    save("peers", {"rounds": a.rounds, "iterations": a.iterations, "results": results}, md)


if __name__ == "__main__":
    main()
