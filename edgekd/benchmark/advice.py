"""What the report advises from the measured rows: a student too far below its teacher is flagged (its speed-ups
are not results), a thread count that is consistently faster than the profile's is named, and FP32 is recommended
where the INT8 artifact is not faster. Pure functions of the rows and the run's config (no I/O, no torch)."""

from __future__ import annotations

from typing import Any

from edgekd.rundir import RunDir


def student_budget(run: RunDir) -> float:
    """``distill.max_drop`` of the run (a run made before the setting existed: its default)."""
    from edgekd.config import DistillConfig

    default = DistillConfig.model_fields["max_drop"].default
    return float(run.manifest.get("config", {}).get("distill", {}).get("max_drop", default))


def student_drops(run: RunDir, rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per target, the points of the primary metric the FP32 student loses against the FP32 teacher on the test
    split, where that exceeds ``distill.max_drop`` (points = 100 × the metric's difference for metrics in [0, 1]).
    Such a student is a failed distillation, not a result: its speed-up is not headlined (issue #19)."""
    model = run.manifest.get("inputs", {}).get("model", {})
    if model.get("metric_higher_is_better") is False:
        return {}
    budget = student_budget(run)
    fp32 = {(r["target"], r["model"]): r.get("metric") for r in rows if r["precision"] == "fp32"}
    out = {}
    for (target, role), student in fp32.items():
        teacher = fp32.get((target, "teacher"))
        bounded = student is not None and teacher is not None and 0 <= min(student, teacher) <= max(student, teacher) <= 1
        if role == "student" and bounded:
            drop = 100.0 * (teacher - student)
            if drop > budget:
                out[target] = drop
    return out


def recommendations(rows: list[dict[str, Any]]) -> list[str]:
    """Where the measured INT8 model (the student, or the teacher itself with distillation off) is not faster than
    its own FP32 export on the same target (batch 1), say so: INT8 then buys size only, and FP32 is the better
    deployment (``--precision fp32``). Tiny transformers on CPU runtimes are the usual case: the Q/DQ work around
    small MatMuls costs more than the int8 kernels save."""
    out = []
    by_model: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r.get("p50_ms") is not None:
            by_model.setdefault((r["target"], r["model"]), {})[r["precision"]] = r
    for r in rows:
        sw = r.get("threads_sweep")
        if sw and r.get("threads") and str(r["threads"]) in sw["p50_ms"] and sw["best_threads"] != r["threads"]:
            own = sw["p50_ms"][str(r["threads"])]
            if own > 1.1 * sw["best_p50_ms"] and sw.get("consistent", True):
                out.append(f"{r['target']}: the {r['precision'].upper()} {r['model']} runs {own / sw['best_p50_ms']:.1f}× "
                           f"faster with {sw['best_threads']} thread(s) than with the profile's {r['threads']} "
                           f"({sw['best_p50_ms']:.3f} vs {own:.3f} ms at batch 1): set the session's intra-op threads "
                           f"to {sw['best_threads']} (edgekd: --set bench.threads={sw['best_threads']}).")
    for (target, model), recs in sorted(by_model.items()):
        fp32, int8 = recs.get("fp32"), recs.get("int8")
        if fp32 and int8 and int8["p50_ms"] >= fp32["p50_ms"]:
            out.append(f"{target}: the INT8 {model} is not faster than FP32 at batch 1 ({int8['p50_ms']:.3f} vs "
                       f"{fp32['p50_ms']:.3f} ms); it only saves size. Deploy FP32 here unless size matters "
                       "(edgekd compress ... --precision fp32).")
    return out
