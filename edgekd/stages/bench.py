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
        return {"bench": ctx.cfg.bench.model_dump(),
                "metric": ctx.run.manifest["inputs"]["model"].get("metric_sha256") if ctx.cfg.metric else None}

    @staticmethod
    def artifacts(ctx, p, roles: tuple[str, ...], deployed: Path) -> list[tuple[str, str, Path]]:  # noqa: ANN001
        """(role, precision, path) to time: the teacher's FP32 export, the student's, the deployed artifact — each file
        once (by content hash). With distillation off there is no student: the deployed artifact is the teacher's."""
        from edgekd.fileio import sha256_path

        b = ctx.cfg.bench
        distilled = ctx.distilled()
        found: list[tuple[str, str, Path]] = []
        if b.include_teacher and "teacher" in roles:
            found.append(("teacher", "fp32", ctx.run.output("export", "teacher")))
        if distilled and b.include_student_fp32 and "student_fp32" in roles and ctx.precision(p) != "fp32":
            found.append(("student", "fp32", ctx.run.output("export", "student")))
        found.append(("student" if distilled else "teacher", ctx.precision(p), deployed))
        seen: dict[str, int] = {}
        unique = []
        for role, prec, path in found:
            h = sha256_path(path) + (sha256_path(path.with_suffix(".bin")) if path.suffix == ".xml" else "")
            if h in seen:  # the same file under two names would be timed against itself
                continue
            seen[h] = len(unique)
            unique.append((role, prec, path))
        return unique

    @staticmethod
    def thread_sweep(ctx, p, settings: dict[str, Any], artifacts: list[tuple[str, str, Path]], warmup: int,  # noqa: ANN001
                     iterations: int) -> list[dict[str, Any]] | None:
        """Every artifact at each candidate thread count, in one process (:mod:`edgekd.benchmark.threads`); None
        when switched off (``bench.thread_sweep``), on a non-CPU device, or with one core."""
        from edgekd.benchmark.threads import CPU_BACKENDS, candidate_threads, sweep

        on_cpu = p.backend == "onnxruntime" or (p.backend == "openvino" and p.openvino.device.upper().startswith("CPU"))
        counts = candidate_threads(settings.get("threads"))
        if not ctx.cfg.bench.thread_sweep or p.backend not in CPU_BACKENDS or not on_cpu or len(counts) < 2:
            return None
        progress.log(f"bench/{p.name}: thread counts {counts} for {len(artifacts)} artifact(s), alternating in one process")
        return sweep(p.backend, [a[2] for a in artifacts], settings, counts, warmup, iterations, min(3, ctx.cfg.bench.rounds))

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
                               {"latency_skipped": note, f"expected_{ctx.task.primary}":
                                {r["precision"]: r.get(ctx.task.primary) for r in rows}})
        eval_npz = ctx.eval_file()
        settings = timing_settings(ctx, p)
        settings["max_seconds"] = p.measure.max_seconds / b.rounds
        artifacts = self.artifacts(ctx, p, backend.bench_roles(), deployed)
        iterations = max(10, (b.iterations or p.measure.iterations) // b.rounds)
        warmup = b.warmup if b.warmup is not None else p.measure.warmup
        parity = json.loads(ctx.run.output("export", "parity").read_text())
        fixed = {k for k, v in parity.items() if v.get("batch_dynamic") is False}  # exports stuck at batch 1
        rounds: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(artifacts))}
        outputs: dict[int, np.ndarray] = {}
        for r in range(b.rounds):  # alternating order, so drift on a shared machine hits every artifact alike
            order = range(len(artifacts)) if r % 2 == 0 else reversed(range(len(artifacts)))
            for i in order:
                role, prec, path = artifacts[i]
                progress.log(f"bench/{p.name}: round {r + 1}/{b.rounds} {role} {prec} ({p.backend}, "
                             f"{settings.get('threads')} threads)")
                logits_path = out / f"outputs-{i}.npy"
                first = r == 0  # the outputs (and the task's metric) come from the first round only
                source = "teacher" if role == "teacher" and prec == "fp32" else "student"
                batches = [1] if source in fixed else p.measure.batch_sizes
                rounds[i].append(run_worker(p.backend, path, eval_npz if first else None, settings, warmup, iterations,
                                            batches, logits_path if first else None, ctx.task.name, ctx.cfg.metric))
                if first:
                    outputs[i] = np.load(logits_path)
                    logits_path.unlink()
        results = [combine_rounds(rounds[i], role, prec, ctx.run.rel(path)) for i, (role, prec, path) in enumerate(artifacts)]
        base_i = next((i for i, (role, prec, _) in enumerate(artifacts) if role == "teacher" and prec == "fp32"), None)
        for i, r in enumerate(results):
            if base_i is not None:
                r["accuracy"]["agreement_with_teacher"] = ctx.task.agreement(outputs[base_i], outputs[i], ctx.info)
                ratios = [t / a for t, a in zip(results[base_i]["per_round_p50_ms"], r["per_round_p50_ms"])]
                r["speedup_vs_teacher_p50"] = float(np.median(ratios))
                r["speedup_range"] = [float(min(ratios)), float(max(ratios))]
            cov = r["latency"].get("1", {}).get("cov")
            if cov is not None and cov > 0.25:
                progress.warn(f"bench/{p.name}: {r['role']} {r['precision']} latency varies a lot (CoV {cov:.2f}): the "
                              "machine is busy or throttling; its numbers are less reliable")
        sweep = self.thread_sweep(ctx, p, settings, artifacts, warmup, iterations)
        for r, sw in zip(results, sweep or []):
            r["threads_sweep"] = sw
        base = results[base_i] if base_i is not None else None
        write_json(out / "latency.json", {"target": p.name, "backend": p.backend, "settings": settings,
                                          "environment": describe_environment(),
                                          "results": [{k: v for k, v in r.items() if k != "accuracy"} for r in results]})
        write_json(out / "accuracy.json", {"target": p.name, "test_samples": len(data.test),
                                           "results": [{"role": r["role"], "precision": r["precision"], **r["accuracy"]}
                                                       for r in results]})
        dep = results[-1]
        primary = ctx.task.primary
        metrics = {primary: dep["accuracy"][primary], "p50_ms": dep["latency"].get("1", {}).get("p50_ms"),
                   "speedup_vs_teacher_p50": dep.get("speedup_vs_teacher_p50"), "rounds": b.rounds}
        if base:
            metrics[f"teacher_{primary}"] = base["accuracy"][primary]
        return StageResult({"latency": ctx.run.rel(out / "latency.json"), "accuracy": ctx.run.rel(out / "accuracy.json")},
                           metrics)


def timing_settings(ctx, p) -> dict[str, Any]:  # noqa: ANN001
    """The worker settings every timed artifact of a target gets: the backend's, ``bench.threads`` over the profile's,
    the input shape and the warm-up time (shared by bench and the precision planner, so both time alike)."""
    from edgekd.backends import get_backend

    b = ctx.cfg.bench
    settings = dict(get_backend(p.backend).settings(p))
    if b.threads:
        settings["threads"] = b.threads
    settings["input_shape"] = list(ctx.input_shape)
    settings["warmup_seconds"] = b.warmup_seconds if b.warmup_seconds is not None else p.measure.warmup_seconds
    settings["ci_rel"] = b.ci_width
    return settings


def combine_rounds(rounds: list[dict[str, Any]], role: str, precision: str, artifact: str) -> dict[str, Any]:
    """One artifact's rounds as one result: batch-1 statistics over every timed call of every round (the raw times),
    other batch sizes as the median over rounds; ``per_round_p50_ms`` keeps each round's batch-1 median."""
    from edgekd.benchmark.stats import latency_stats

    first = rounds[0]
    latency: dict[str, Any] = {}
    for bkey in first["latency"]:
        per = [r["latency"][bkey] for r in rounds]
        times = [t for st in per for t in st.get("times_ms", [])]
        if times:
            latency[bkey] = {**latency_stats(np.asarray(times) / 1e3, batch=int(bkey)), "times_ms": times[:2000]}
        else:
            med = float(np.median([st["p50_ms"] for st in per]))
            latency[bkey] = {**per[0], "p50_ms": med, "throughput_per_s": int(bkey) * 1e3 / med if med else None}
        latency[bkey]["rounds"] = len(rounds)
    return {**first, "role": role, "precision": precision, "artifact": artifact, "latency": latency,
            "per_round_p50_ms": [r["latency"].get("1", next(iter(r["latency"].values())))["p50_ms"] for r in rounds],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds), "accuracy": dict(first.get("accuracy", {}))}
