"""The run report: ``report.json`` for machines, ``report.md`` and the charts (:mod:`edgekd.benchmark.charts`) for
people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.benchmark.advice import recommendations, student_budget, student_drops
from edgekd.benchmark.charts import METRIC_LABELS, latency_png, pareto_png
from edgekd.benchmark.tables import thread_lines, throughput_lines
from edgekd.fileio import read_json, write_json, write_text
from edgekd.rundir import RunDir




def primary_metric(run: RunDir) -> str:
    """The run's primary metric: the user metric's primary key (``--metric``) or its task's, both recorded in the
    manifest, never assumed."""
    model = run.manifest.get("inputs", {}).get("model", {})
    return model.get("metric_primary") or task_metric(run)


def task_metric(run: RunDir) -> str:
    """The primary metric of the run's task itself (what distillation selects and reports on the val split)."""
    from edgekd.tasks import get_task

    return get_task(run.manifest.get("inputs", {}).get("model", {}).get("task", "classify")).primary


def collect(run: RunDir) -> list[dict[str, Any]]:
    """One row per (target, artifact): ``metric`` is the task's primary metric (``metric_name``); classification
    rows also carry it as ``top1``; ``scores`` holds everything the task measured."""
    primary = primary_metric(run)
    rows = []
    for stage_id, rec in sorted(run.manifest.get("stages", {}).items()):
        if not stage_id.startswith("bench/") or rec.get("status") != "done":
            continue
        target = stage_id.split("/", 1)[1]
        lat = read_json(run.root / rec["outputs"]["latency"])
        acc_doc = read_json(run.root / rec["outputs"]["accuracy"])
        acc = {(a["role"], a["precision"]): a for a in acc_doc["results"]}
        if lat.get("skipped"):  # a TensorRT bundle with no engine built here: expected accuracy, no latency
            for a in acc_doc["results"]:
                rows.append({"target": target, "backend": lat["backend"], "model": a["role"], "precision": a["precision"],
                             "metric": a.get(primary), "metric_name": primary, "top1": a.get("top1"),
                             "agreement_with_teacher": None, "p50_ms": None, "p90_ms": None,
                             "p99_ms": None, "cov": None, "throughput_per_s": {}, "speedup_vs_teacher_p50": None,
                             "size_bytes": None, "peak_rss_mb": None, "threads": None, "artifact": None,
                             "note": f"expected ({a.get('measured_on')}); latency: {lat['skipped']}"})
            continue
        for r in lat["results"]:
            a = acc.get((r["role"], r["precision"]), {})
            l1 = r["latency"].get("1", {})
            rows.append({
                "target": target, "backend": lat["backend"], "model": r["role"], "precision": r["precision"],
                "metric": a.get(primary), "metric_name": primary, "top1": a.get("top1"),
                "scores": {k: v for k, v in a.items() if k not in ("role", "precision")},
                "agreement_with_teacher": a.get("agreement_with_teacher"),
                "p50_ms": l1.get("p50_ms"), "p50_ci95_ms": l1.get("p50_ci95_ms"), "p90_ms": l1.get("p90_ms"),
                "p99_ms": l1.get("p99_ms"), "cov": l1.get("cov"), "throughput_per_s": {b: v["throughput_per_s"] for b, v in r["latency"].items()},
                "speedup_vs_teacher_p50": r.get("speedup_vs_teacher_p50"), "speedup_range": r.get("speedup_range"),
                "rounds": len(r.get("per_round_p50_ms") or []) or None, "size_bytes": r["size_bytes"],
                "peak_rss_mb": r["peak_rss_mb"], "threads": r.get("threads"), "artifact": r.get("artifact"),
                "p95_ms": l1.get("p95_ms"), "mean_ms": l1.get("mean_ms"), "outliers": l1.get("outliers"),
                "times_ms": l1.get("times_ms"), "tegrastats": l1.get("tegrastats"),
                "threads_sweep": r.get("threads_sweep"),
            })
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _speedup(r: dict[str, Any], flagged: bool = False) -> str:
    """``6.7× (6.2–7.1)``: the median of the per-round ratios and their range; a flagged student's is bracketed
    and marked, so a failed distillation never reads as a result."""
    if r.get("speedup_vs_teacher_p50") is None:
        return "–"
    if flagged:
        return f"({r['speedup_vs_teacher_p50']:.1f}×, not a result: see the warning)"
    text = f"{r['speedup_vs_teacher_p50']:.1f}×"
    lo_hi = r.get("speedup_range")
    if lo_hi and (r.get("rounds") or 0) > 1 and not (r["model"] == "teacher" and r["precision"] == "fp32"):
        text += f" ({lo_hi[0]:.1f}–{lo_hi[1]:.1f})"
    return text


def markdown(run: RunDir, rows: list[dict[str, Any]]) -> str:
    m = run.manifest
    data = m.get("inputs", {}).get("data", {})
    lines = [f"# edgekd report — {run.root.name}", ""]
    model = m.get("inputs", {}).get("model", {})
    if model:
        lines.append(f"Teacher `{Path(model['path']).name}` ({model['format']}, input {model['input_shape']}); "
                     f"test set: {data.get('sizes', {}).get('test', '?')} samples of `{data.get('source', '?')}`.")
    d = m.get("stages", {}).get("distill", {}).get("metrics", {})
    primary = primary_metric(run)
    label = METRIC_LABELS.get(primary, primary)
    own = task_metric(run)
    if d.get("student"):
        lines.append(f"Student `{d['student']}`: {d.get('student_params', 0):,} params vs teacher {d.get('teacher_params', 0):,}; "
                     f"val {METRIC_LABELS.get(own, own)} {d.get(f'student_val_{own}', 0):.4f} "
                     f"(teacher {d.get(f'teacher_val_{own}', 0):.4f}).")
    if d.get("student_choice"):
        lines.append(f"Student chosen by `--student auto`: {d['student_choice']} (`01-distill/student_choice.json`).")
    if model.get("metric"):
        lines.append(f"Primary metric: `{primary}` from the user metric `{model['metric']}`"
                     f"{' (lower is better)' if model.get('metric_higher_is_better') is False else ''}; the task's own "
                     "metrics are in the JSON beside it.")
    if data.get("data_free"):
        syn = data.get("synthetic", {})
        lines.append(f"**Data-free run**: no real data was given; {syn.get('n')} images were synthesized with "
                     f"`{syn.get('method')}` ({syn.get('seconds', 0):.0f} s). Top-1 below is agreement with the teacher's "
                     "labels on held-out synthetic images, not accuracy on real data.")
    elif data.get("synthetic"):
        syn = data["synthetic"]
        lines.append(f"Training data mixed with {syn.get('n')} synthetic images (`{syn.get('method')}`).")
    cpu = m.get("environment", {}).get("cpu", {})
    lines += [f"Measured on: {cpu.get('model', '?')} ({cpu.get('logical_cores')} logical cores, ISA {', '.join(cpu.get('isa', []))}).", ""]
    lines += [f"| target | runtime | model | precision | {label} | agree w/ teacher | p50 ms | p90 ms | p99 ms | speed-up | size KB | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    flagged = student_drops(run, rows)
    for r in rows:
        size = None if r["size_bytes"] is None else r["size_bytes"] / 1024
        lines.append(f"| {r['target']} | {r['backend']} | {r['model']} | {r['precision']} | {_fmt(r['metric'], '.4f')} | "
                     f"{_fmt(r['agreement_with_teacher'], '.4f')} | {_fmt(r['p50_ms'], '.3f')} | {_fmt(r['p90_ms'], '.3f')} | "
                     f"{_fmt(r['p99_ms'], '.3f')} | {_speedup(r, r['model'] == 'student' and r['target'] in flagged)} | {_fmt(size, '.0f')} | "
                     f"{_fmt(r['peak_rss_mb'], '.0f')} |")
    for r in rows:
        if r.get("note"):
            lines.append(f"\n- {r['target']} {r['model']} {r['precision']}: {r['note']}")
        tele = r.get("tegrastats") or {}
        if tele.get("energy_per_inference_mj") is not None:
            lines.append(f"\n- {r['target']} {r['model']} {r['precision']}: {tele['energy_per_inference_mj']:.2f} mJ per inference "
                         f"(mean input power {tele['power_in_mw_mean']:.0f} mW, peak temperatures {tele.get('peak_temps_c')})")
    budget = student_budget(run)
    for target, drop in sorted(flagged.items()):
        lines.append(f"\n- **Warning** — {target}: the FP32 student loses {drop:.1f} points of {label} against the "
                     f"teacher (budget distill.max_drop = {budget:g}), so its speed-ups are not results. Train longer "
                     "(--epochs), pick a larger student (--student), or quantize the teacher itself (--no-distill).")
    for rec in recommendations(rows):
        lines.append(f"\n- **Recommendation** — {rec}")
    n_rounds = max((r.get("rounds") or 1 for r in rows), default=1)
    scored = ("Accuracy: top-1 on the held-out test split." if primary == "top1" else
              "Fidelity R²: every output of the artifact against the teacher's PyTorch outputs on the held-out test "
              "split, 1 − Σ(s − t)² / Σ(t − t̄)², the minimum over outputs (1 = the teacher exactly); agreement is the "
              "same against the teacher's ONNX export." if primary == "fidelity_r2" else f"{label} on the held-out test split.")
    if model.get("metric"):
        scored = f"{label}: the user metric on every artifact's outputs on the held-out test split."
    lines += ["", f"Latency: batch 1, a fresh process per artifact and round, after warm-up; {n_rounds} alternating "
              "round(s) in one run (A B C, C B A, …); speed-up = teacher p50 / model p50 on the same runtime and thread "
              f"count, the median of the per-round ratios (their range in brackets). {scored}", ""]
    lines += output_lines(rows)
    lines += thread_lines(rows)
    lines += throughput_lines(rows)
    for stage_id, rec in sorted(m.get("stages", {}).items()):
        if stage_id.startswith("lower/") and rec.get("status") == "done":
            b = read_json(run.root / rec["outputs"]["build"])
            kern = b.get("int8_kernels") or {}
            low = b.get("low_bit_kernels") or {}
            line = f"- `{stage_id}`: int8 kernels that executed: " + (", ".join(f"{k}×{v}" for k, v in kern.items()) or "none")
            if low:
                line += "; low-bit kernels: " + ", ".join(f"{k}×{v}" for k, v in low.items())
            if b.get("backend") == "tensorrt":
                lint = b.get("qdq_lint") or {}
                line = (f"- `{stage_id}`: TensorRT bundle ({b.get('bundle_precision')}; {b.get('tensorrt')}); engines built here: "
                        f"{', '.join(b.get('engines_built') or []) or 'none'}; Q/DQ lint: "
                        f"{'TensorRT-ready' if lint.get('ok') else 'PROBLEMS: ' + '; '.join(lint.get('errors', [])[:3]) if lint else 'n/a'}"
                        f"; INT8-vs-FP16 gate: {(b.get('expected_accuracy') or {}).get('gate_reason')}")
            lines.append(line)
    lines += parity_lines(run)
    lines += plan_lines(run)
    lines += small_data_lines(run)
    lines += input_layer_lines(run)
    failed = failures(run)
    if failed:
        lines += ["", "**Failed** (what passed is kept; fix and re-run the same command to resume):", ""]
        lines += [f"- `{sid}`: {err}" for sid, err in failed.items()]
    lines += ["", "Stages: " + ", ".join(f"{k} {v.get('status')} ({v.get('seconds', 0):.1f}s)" for k, v in m.get("stages", {}).items())]
    return "\n".join(lines) + "\n"


def output_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The outputs task: fidelity to the teacher per output, and the targets' own metrics when the data had them."""
    out: list[str] = []
    for r in rows:
        sc = r.get("scores") or {}
        for name, f in (sc.get("fidelity") or {}).items():
            if not out:
                out = ["Per output (against the teacher's PyTorch outputs):", "",
                       "| target | model | precision | output | R² | cosine | rel. L2 | Pearson r | max abs diff |",
                       "|---|---|---|---|---|---|---|---|---|"]
            out.append(f"| {r['target']} | {r['model']} | {r['precision']} | {name} | {_fmt(f.get('r2'), '.4f')} | "
                       f"{_fmt(f.get('cosine'), '.4f')} | {_fmt(f.get('rel_l2'), '.4f')} | {_fmt(f.get('pearson_r'), '.4f')} | "
                       f"{_fmt(f.get('max_abs_diff'), '.3g')} |")
    tgt = [(r, {k[len("target_"):]: v for k, v in (r.get("scores") or {}).items() if k.startswith("target_") and k != "target_output"})
           for r in rows]
    tgt = [(r, t) for r, t in tgt if t]
    if tgt:
        keys = sorted({k for _, t in tgt for k in t})
        out += ["", f"Against the data's targets (output `{tgt[0][0]['scores'].get('target_output')}`):", "",
                "| target | model | precision | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
        out += [f"| {r['target']} | {r['model']} | {r['precision']} | " + " | ".join(_fmt(t.get(k), '.4f') for k in keys) + " |"
                for r, t in tgt]
    return [*out, ""] if out else []


def plan_lines(run: RunDir) -> list[str]:
    """The precision plans (``quantize.plan``): what was kept in float and why, the plans tried, the charts."""
    lines: list[str] = []
    for sid, rec in sorted(run.manifest.get("stages", {}).items()):
        if not sid.startswith("plan/") or not (rec.get("outputs") or {}).get("plan"):
            continue
        path = run.root / rec["outputs"]["plan"]
        if not path.exists():
            continue
        plan = read_json(path)
        target, chosen = sid.split("/", 1)[1], plan.get("chosen")
        if not lines:
            lines += ["", "**Precision plans** (layers kept in float measured on the target runtime's own INT8 artifact, "
                          "val split; `edgekd sensitivity RUN -t TARGET` lists every layer):", ""]
        head = (f"- `{target}`: {chosen['name']}" + (f" ({', '.join(f'`{n}`' for n in chosen['keep_float'])})"
                                                      if chosen["keep_float"] else "") if chosen else f"- `{target}`: no plan")
        lines.append(f"{head} — {plan['reason']}; planner {plan['seconds'] + plan.get('sensitivity_seconds', 0):.0f} s, "
                     f"charts `{run.rel(path.parent / 'pareto.png')}`, "
                     f"`{run.rel(path.parents[2] / '03-sensitivity' / target / 'sensitivity.png')}`")
        lines += ["", f"  | plan | {plan['metric']} (val) | drop (pt) | p50 ms |", "  |---|---|---|---|"]
        for c in plan["candidates"]:
            p50 = f"{c['p50_ms']:.3f}" if c.get("p50_ms") is not None else "–"
            lines.append(f"  | {c['name']} | {c['metric']:.4f} | {c['drop']:+.2f} | {p50} |")
        if plan.get("timing_note"):
            lines.append(f"\n  {plan['timing_note']}")
    return lines


def input_layer_lines(run: RunDir) -> list[str]:
    """Where PTQ tried the model's input layers in float (``quantize.input_layers_float``), what it decided and why."""
    out = []
    for sid, rec in sorted(run.manifest.get("stages", {}).items()):
        if sid.startswith("quantize/") and rec.get("status") == "done" and "calibration" in rec.get("outputs", {}):
            choice = read_json(run.root / rec["outputs"]["calibration"]).get("input_layers_float") or {}
            if choice.get("proposed"):
                out.append(f"- `{sid}`: input layers: {choice['reason']}.")
    return ["", *out] if out else []


def small_data_lines(run: RunDir) -> list[str]:
    """Where the data was smaller than a step asked for (calibration set, parity inputs), say so."""
    out = []
    st = run.manifest.get("stages", {})
    for sid, rec in sorted(st.items()):
        if sid.startswith("quantize/") and rec.get("status") == "done" and "calibration" in rec.get("outputs", {}):
            cal = read_json(run.root / rec["outputs"]["calibration"]).get("calibration") or {}
            if cal.get("samples_requested") and cal.get("samples", 0) < cal["samples_requested"]:
                out.append(f"- `{sid}`: calibrated on {cal['samples']} samples, fewer than the {cal['samples_requested']} "
                           "the recipe asks for (the data has no more).")
    exp = st.get("export", {})
    if exp.get("status") == "done" and "parity" in exp.get("outputs", {}):
        par = read_json(run.root / exp["outputs"]["parity"])
        n = min((r["parity_torch_vs_onnxruntime"]["samples"] for r in par.values() if "parity_torch_vs_onnxruntime" in r),
                default=0)
        if 0 < n < 256:
            out.append(f"- export parity was checked on {n} inputs only (256 or more make it meaningful).")
    return ["", *out] if out else []


def current_targets(run: RunDir) -> set[str] | None:
    """Profile names the run's config asks for now (``auto`` as the recorded CPU resolves it); None if unknown."""
    from edgekd.errors import EdgekdError
    from edgekd.targets import auto_profile_name, resolve

    cpu = run.manifest.get("environment", {}).get("cpu", {})
    names = set()
    try:
        for t in run.manifest.get("config", {}).get("targets") or []:
            names.add(auto_profile_name(cpu.get("machine", ""), cpu.get("isa", []))[0] if t == "auto" else resolve(t).name)
    except EdgekdError:
        return None
    return names or None


def failures(run: RunDir) -> dict[str, str]:
    """Stages that failed or were interrupted, with their one-line error — except those of targets the config no
    longer asks for (a re-run with other targets keeps their records, but they are not this run's outcome)."""
    targets = current_targets(run)
    return {sid: rec.get("error") or rec.get("status", "") for sid, rec in run.manifest.get("stages", {}).items()
            if rec.get("status") in ("failed", "interrupted")
            and (targets is None or "/" not in sid or sid.split("/", 1)[1] in targets or sid == "quantize/qat")}


def parity_lines(run: RunDir) -> list[str]:
    """Torch FP32 ↔ ONNX ↔ quantized ↔ lowered artifact, side by side (top-1 agreement, max |Δlogit|)."""
    st = run.manifest.get("stages", {})
    rows: list[tuple[str, dict[str, Any]]] = []
    exp = st.get("export", {})
    # with distillation off the deployed model is the teacher itself: one export row, and its INT8 is the teacher's
    distilled = run.manifest.get("config", {}).get("distill", {}).get("enabled", True)
    quantized = "student" if distilled else "teacher"
    if exp.get("status") == "done" and "parity" in exp.get("outputs", {}):
        par = read_json(run.root / exp["outputs"]["parity"])
        for name, rec in par.items():
            if name == "student" and not distilled and "teacher" in par:
                continue
            rows.append((f"{name}: torch FP32 → ONNX (ONNX Runtime)", rec.get("parity_torch_vs_onnxruntime", {})))
    qat = st.get("quantize/qat", {})
    if qat.get("status") == "done":
        q = read_json(run.root / qat["outputs"]["qat"])
        for rt, rec in q.get("parity_vs_torch_fakequant_test", {}).items():
            rows.append((f"student: torch fake-quant → Q/DQ ONNX on {rt}", rec))
    for sid, rec in sorted(st.items()):
        if sid.startswith("quantize/") and sid != "quantize/qat" and rec.get("status") == "done":
            cal = read_json(run.root / rec["outputs"]["calibration"])
            if "parity_int8_vs_fp32_val" in cal:
                rt = cal.get("parity_runtime", "the target runtime")
                rows.append((f"{quantized}: ONNX FP32 → INT8 for {sid.split('/', 1)[1]} ({rt}, val split)",
                             cal["parity_int8_vs_fp32_val"]))
    if not rows:
        return []
    what = next((r.get("agreement_metric") for _, r in rows if r.get("agreement_metric")), "top-1 agreement")
    out = ["", f"Parity ({what}, max |Δ output|):", "", f"| comparison | {what} | max abs diff | samples |",
           "|---|---|---|---|"]
    for name, r in rows:
        agree = r.get("agreement", r.get("top1_agreement"))
        cell = f"{agree:.4f}" if agree is not None else None
        if "map_drop_points" in r:  # the detect INT8 gate: the val mAP drop, with the mAP@.5 agreement beside it
            cell = (f"{r['map50_agreement']:.4f}; val mAP@[.5:.95] {r['map_fp32']:.4f} → {r['map_int8']:.4f} "
                    f"({-r['map_drop_points']:+.2f} pt, the gate)")
        elif agree is not None and r.get("agreement_metric", what) != what:
            cell += f" ({r['agreement_metric']})"
        if cell is not None:
            out.append(f"| {name} | {cell} | {_fmt(r.get('max_abs_diff'), '.2e')} | {r.get('samples', '–')} |")
    return out


def compare(run_a: RunDir, run_b: RunDir) -> dict[str, Any]:
    """Rows of two runs joined on (target, model, precision): top-1 and p50 side by side, B/A latency ratio."""
    a = {(r["target"], r["model"], r["precision"]): r for r in collect(run_a)}
    b = {(r["target"], r["model"], r["precision"]): r for r in collect(run_b)}
    keys = sorted(set(a) | set(b))
    rows = []
    for k in keys:
        ra, rb = a.get(k, {}), b.get(k, {})
        pa, pb = ra.get("p50_ms"), rb.get("p50_ms")
        ta, tb = ra.get("metric"), rb.get("metric")
        rows.append({"target": k[0], "model": k[1], "precision": k[2], "metric_a": ta, "metric_b": tb,
                     "top1_a": ra.get("top1"), "top1_b": rb.get("top1"),
                     "top1_delta_points": 100 * (tb - ta) if ta is not None and tb is not None else None,
                     "p50_ms_a": pa, "p50_ms_b": pb, "p50_ratio_b_over_a": pb / pa if pa and pb else None})
    ma, mb = primary_metric(run_a), primary_metric(run_b)
    if ma != mb:
        from edgekd.errors import UsageError

        raise UsageError(f"{run_a.root.name} is scored by {ma}, {run_b.root.name} by {mb}: they cannot be compared",
                         "compare runs of the same task")
    label = METRIC_LABELS.get(ma, ma)
    md = [f"# edgekd compare — A: {run_a.root.name}, B: {run_b.root.name}", "",
          f"| target | model | precision | {label} A | {label} B | Δ pt | p50 ms A | p50 ms B | B/A |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['target']} | {r['model']} | {r['precision']} | {_fmt(r['metric_a'], '.4f')} | {_fmt(r['metric_b'], '.4f')} | "
                  f"{_fmt(r['top1_delta_points'], '+.2f')} | {_fmt(r['p50_ms_a'], '.3f')} | {_fmt(r['p50_ms_b'], '.3f')} | "
                  f"{_fmt(r['p50_ratio_b_over_a'], '.2f')} |")
    env_a = run_a.manifest.get("environment", {}).get("cpu", {}).get("model")
    env_b = run_b.manifest.get("environment", {}).get("cpu", {}).get("model")
    if env_a != env_b:
        md += ["", f"Note: measured on different machines (A: {env_a}; B: {env_b}); latency ratios compare machines too."]
    return {"a": str(run_a.root), "b": str(run_b.root), "rows": rows, "markdown": "\n".join(md) + "\n"}


def render(run: RunDir) -> dict[str, Any]:
    rows = collect(run)
    md = markdown(run, rows)
    report = {"run": str(run.root), "rows": [{k: v for k, v in r.items() if k != "times_ms"} for r in rows],
              "recommendations": recommendations(rows), "failures": failures(run), "stages": {k: {kk: v.get(kk) for kk in ("status", "seconds", "metrics")}
                                                            for k, v in run.manifest.get("stages", {}).items()}}
    write_json(run.root / "report.json", report)
    write_text(run.root / "report.md", md)
    if any(r["p50_ms"] is not None for r in rows):
        pareto_png(rows, run.root / "pareto.png")
        latency_png(rows, run.root / "latency.png")
    report["markdown"] = md
    return report
