"""Demo student INT8 vs FP32 teacher, side by side in one run, on ONNX Runtime and OpenVINO CPU.

    python benchmarks/int8_speed_accuracy.py [--run-dir runs/demo] [--rounds 5]

Runs (or reuses) the demo pipeline of examples/demo.yaml, then re-times the FP32 teacher and the INT8 student of
each runtime in alternating rounds (teacher, student, teacher, ...) with the same thread count, each in a fresh
worker process, and reports the median of the per-round p50s. Accuracy is top-1 on the full 10k test set.
Goals (issue #2): student INT8 within 1.0 point of the FP32 teacher, and ≥ 4× faster at batch 1.
"""

from __future__ import annotations

import argparse
import statistics

from _common import REPO, md_table, save

import edgekd
from edgekd.api import config_from_run
from edgekd.backends import get_backend
from edgekd.benchmark.subprocess_worker import run_worker
from edgekd.context import open_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", default=str(REPO / "runs" / "demo"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=500)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    a = ap.parse_args()
    edgekd.compress(config=REPO / "examples" / "demo.yaml", run_dir=a.run_dir)
    pipe = open_run(config_from_run(a.run_dir))
    run = pipe.run
    eval_npz = pipe.eval_file()
    results = []
    for p in pipe.profiles:
        for threads in a.threads:
            settings = dict(get_backend(p.backend).settings(p))
            settings.update(input_shape=list(pipe.input_shape), threads=threads)
            arts = {"teacher fp32": run.output("export", "teacher"), "student int8": run.output(f"lower/{p.name}", "model")}
            p50s: dict[str, list[float]] = {k: [] for k in arts}
            acc: dict[str, float] = {}
            for r in range(a.rounds):
                for name, path in (arts.items() if r % 2 == 0 else reversed(list(arts.items()))):
                    res = run_worker(p.backend, path, eval_npz if not acc.get(name) else None, settings, 200, a.iterations, [1], None)
                    p50s[name].append(res["latency"]["1"]["p50_ms"])
                    if name not in acc:
                        acc[name] = res["accuracy"]["top1"]
            med = {k: statistics.median(v) for k, v in p50s.items()}
            results.append({
                "target": p.name, "backend": p.backend, "threads": threads,
                "teacher_fp32": {"top1": acc["teacher fp32"], "p50_ms": med["teacher fp32"], "p50_rounds_ms": p50s["teacher fp32"]},
                "student_int8": {"top1": acc["student int8"], "p50_ms": med["student int8"], "p50_rounds_ms": p50s["student int8"]},
                "top1_drop_points": 100 * (acc["teacher fp32"] - acc["student int8"]),
                "speedup_p50": med["teacher fp32"] / med["student int8"],
                "speedup_per_round": [t / s_ for t, s_ in zip(p50s["teacher fp32"], p50s["student int8"])],
            })
    rows = []
    for r in results:
        ok = r["top1_drop_points"] <= 1.0 and r["speedup_p50"] >= 4.0
        rows.append([r["backend"], r["threads"], f"{100 * r['teacher_fp32']['top1']:.2f}", f"{100 * r['student_int8']['top1']:.2f}",
                     f"{r['top1_drop_points']:+.2f}", f"{r['teacher_fp32']['p50_ms']:.3f}", f"{r['student_int8']['p50_ms']:.3f}",
                     f"{r['speedup_p50']:.1f}× ({min(r['speedup_per_round']):.1f}–{max(r['speedup_per_round']):.1f})",
                     "yes" if ok else "NO"])
    md = ("# Demo student INT8 vs FP32 teacher (Fashion-MNIST test set, 10k images)\n\n"
          f"Median of {a.rounds} alternating rounds of p50 latency (batch 1, {a.iterations} timed runs each, fresh process per "
          "measurement, same threads for both).\n\n"
          + md_table(["runtime", "threads", "teacher FP32 top-1 %", "student INT8 top-1 %", "drop (pts)", "teacher p50 ms",
                      "student INT8 p50 ms", "speed-up (range over rounds)", "goal met (≤1.0 pt, ≥4×)"], rows))
    md += ("\n\nThe thread count is the same for teacher and student in each row. The demo profiles run 2 threads; on this "
           "2-vCPU VM, OpenVINO's 2-thread latency for the 0.05 ms student is bimodal between runs (≈0.044 or ≈0.072 ms): "
           "waking the second worker thread costs ~30 µs, which is most of the student's compute. At 1 thread the "
           "student's latency is stable. Sub-0.1 ms numbers include the Python call overhead of each runtime's API.\n")
    save("int8_speed_accuracy", {"rounds": a.rounds, "iterations": a.iterations, "results": results}, md)


if __name__ == "__main__":
    main()
