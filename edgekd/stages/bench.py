"""Stage ``bench/<target>``: latency (batch 1 and the profile's batch sizes) and accuracy of the teacher's and the
student's FP32 exports and of the deployed student, each in its own worker process with the profile's settings.
Where the device is absent (a TensorRT bundle with no engine here, an OpenVINO iGPU/NPU IR), the backend says why and
gives the expected accuracy instead. Always re-run by ``edgekd bench RUN``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import progress
from edgekd.fileio import write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register


@register
class Bench(Stage):
    name = "bench"
    per_target = True
    reads_data = True

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return [("lower", profile), ("export", None)]

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        return {"bench": ctx.cfg.bench.model_dump()}

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        from edgekd.backends import get_backend
        from edgekd.benchmark.envinfo import capture as describe_environment
        from edgekd.benchmark.subprocess_worker import run_worker

        p, b = profile, ctx.cfg.bench
        backend = get_backend(p.backend)
        out = ctx.run.fresh_dir("bench", p.name)
        deployed = ctx.run.output(f"lower/{p.name}", "model")
        build = json.loads(ctx.run.output(f"lower/{p.name}", "build").read_text())
        data = ctx.data
        absent = backend.unmeasured(p, build, (data.test.x, data.test.y), deployed)
        if absent is not None:
            note, rows = absent
            write_json(out / "latency.json", {"target": p.name, "backend": p.backend, "skipped": note, "results": [],
                                              "environment": describe_environment()})
            extra = {"gate": build.get("expected_accuracy", {}).get("gate_reason"),
                     "bundle_precision": build.get("bundle_precision")} if p.backend == "tensorrt" else {}
            write_json(out / "accuracy.json", {"target": p.name, "test_samples": len(data.test), "results": rows, **extra})
            progress.log(f"bench/{p.name}: latency not measured ({note})")
            return StageResult({"latency": ctx.run.rel(out / "latency.json"), "accuracy": ctx.run.rel(out / "accuracy.json")},
                               {"latency_skipped": note, "expected_top1": {r["precision"]: r["top1"] for r in rows}})
        eval_npz = ctx.eval_file()
        settings = dict(backend.settings(p))
        if b.threads:
            settings["threads"] = b.threads
        settings["input_shape"] = list(ctx.input_shape)
        settings["warmup_seconds"] = b.warmup_seconds if b.warmup_seconds is not None else p.measure.warmup_seconds
        settings["max_seconds"] = p.measure.max_seconds
        roles = backend.bench_roles()
        artifacts: list[tuple[str, str, Path]] = []
        if b.include_teacher and "teacher" in roles:
            artifacts.append(("teacher", "fp32", ctx.run.output("export", "teacher")))
        if b.include_student_fp32 and "student_fp32" in roles and ctx.precision(p) != "fp32":
            artifacts.append(("student", "fp32", ctx.run.output("export", "student")))
        artifacts.append(("student", ctx.precision(p), deployed))
        results = []
        teacher_out = None
        for role, prec, path in artifacts:
            progress.log(f"bench/{p.name}: {role} {prec} ({p.backend}, {settings.get('threads')} threads)")
            logits_path = out / f"logits-{role}-{prec}.npy"
            r = run_worker(p.backend, path, eval_npz, settings, b.warmup if b.warmup is not None else p.measure.warmup,
                           b.iterations or p.measure.iterations, p.measure.batch_sizes, logits_path, ctx.task.name)
            outputs = np.load(logits_path)
            logits_path.unlink()
            if role == "teacher":
                teacher_out = outputs
            r.update(role=role, precision=prec, artifact=ctx.run.rel(path))
            if teacher_out is not None:
                r["accuracy"]["agreement_with_teacher"] = ctx.task.agreement(teacher_out, outputs)
            results.append(r)
        base = next((r for r in results if r["role"] == "teacher"), None)
        for r in results:
            if base:
                r["speedup_vs_teacher_p50"] = (base["latency"]["1"]["p50_ms"] / r["latency"]["1"]["p50_ms"]
                                               if "1" in r["latency"] else None)
        write_json(out / "latency.json", {"target": p.name, "backend": p.backend, "settings": settings,
                                          "environment": describe_environment(),
                                          "results": [{k: v for k, v in r.items() if k != "accuracy"} for r in results]})
        write_json(out / "accuracy.json", {"target": p.name, "test_samples": len(data.test),
                                           "results": [{"role": r["role"], "precision": r["precision"], **r["accuracy"]}
                                                       for r in results]})
        dep = results[-1]
        metrics = {"top1": dep["accuracy"]["top1"], "p50_ms": dep["latency"].get("1", {}).get("p50_ms"),
                   "speedup_vs_teacher_p50": dep.get("speedup_vs_teacher_p50")}
        if base:
            metrics["teacher_top1"] = base["accuracy"]["top1"]
        return StageResult({"latency": ctx.run.rel(out / "latency.json"), "accuracy": ctx.run.rel(out / "accuracy.json")},
                           metrics)
