"""The run report: ``report.json`` for machines, ``report.md`` and ``pareto.png`` for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.fileio import read_json, write_json, write_text
from edgekd.pipeline import RunDir


def collect(run: RunDir) -> list[dict[str, Any]]:
    rows = []
    for stage_id, rec in sorted(run.manifest.get("stages", {}).items()):
        if not stage_id.startswith("bench/") or rec.get("status") != "done":
            continue
        target = stage_id.split("/", 1)[1]
        lat = read_json(run.root / rec["outputs"]["latency"])
        acc = {(a["role"], a["precision"]): a for a in read_json(run.root / rec["outputs"]["accuracy"])["results"]}
        for r in lat["results"]:
            a = acc.get((r["role"], r["precision"]), {})
            l1 = r["latency"].get("1", {})
            rows.append({
                "target": target, "backend": lat["backend"], "model": r["role"], "precision": r["precision"],
                "top1": a.get("top1"), "agreement_with_teacher": a.get("agreement_with_teacher"),
                "p50_ms": l1.get("p50_ms"), "p90_ms": l1.get("p90_ms"), "p99_ms": l1.get("p99_ms"),
                "cov": l1.get("cov"), "throughput_per_s": {b: v["throughput_per_s"] for b, v in r["latency"].items()},
                "speedup_vs_teacher_p50": r.get("speedup_vs_teacher_p50"), "size_bytes": r["size_bytes"],
                "peak_rss_mb": r["peak_rss_mb"], "threads": r.get("threads"), "artifact": r.get("artifact"),
            })
    return rows


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def markdown(run: RunDir, rows: list[dict[str, Any]]) -> str:
    m = run.manifest
    data = m.get("inputs", {}).get("data", {})
    lines = [f"# edgekd report — {run.root.name}", ""]
    model = m.get("inputs", {}).get("model", {})
    if model:
        lines.append(f"Teacher `{Path(model['path']).name}` ({model['format']}, input {model['input_shape']}); "
                     f"test set: {data.get('sizes', {}).get('test', '?')} samples of `{data.get('source', '?')}`.")
    d = m.get("stages", {}).get("distill", {}).get("metrics", {})
    if d.get("student"):
        lines.append(f"Student `{d['student']}`: {d.get('student_params', 0):,} params vs teacher {d.get('teacher_params', 0):,}; "
                     f"val top-1 {d.get('student_val_top1', 0):.4f} (teacher {d.get('teacher_val_top1', 0):.4f}).")
    cpu = m.get("environment", {}).get("cpu", {})
    lines += [f"Measured on: {cpu.get('model', '?')} ({cpu.get('logical_cores')} logical cores, ISA {', '.join(cpu.get('isa', []))}).", ""]
    lines += ["| target | runtime | model | precision | top-1 | agree w/ teacher | p50 ms | p90 ms | p99 ms | speed-up | size KB | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['backend']} | {r['model']} | {r['precision']} | {_fmt(r['top1'], '.4f')} | "
                     f"{_fmt(r['agreement_with_teacher'], '.4f')} | {_fmt(r['p50_ms'], '.3f')} | {_fmt(r['p90_ms'], '.3f')} | "
                     f"{_fmt(r['p99_ms'], '.3f')} | {_fmt(r['speedup_vs_teacher_p50'], '.1f')}× | {r['size_bytes'] / 1024:.0f} | "
                     f"{r['peak_rss_mb']:.0f} |")
    lines += ["", "Latency: batch 1, one process per artifact, after warm-up; speed-up = teacher p50 / model p50 on the same "
              "runtime and thread count. Accuracy: top-1 on the held-out test split.", ""]
    for stage_id, rec in sorted(m.get("stages", {}).items()):
        if stage_id.startswith("lower/") and rec.get("status") == "done":
            b = read_json(run.root / rec["outputs"]["build"])
            kern = b.get("int8_kernels") or {}
            low = b.get("low_bit_kernels") or {}
            line = f"- `{stage_id}`: int8 kernels that executed: " + (", ".join(f"{k}×{v}" for k, v in kern.items()) or "none")
            if low:
                line += "; low-bit kernels: " + ", ".join(f"{k}×{v}" for k, v in low.items())
            lines.append(line)
    lines += ["", "Stages: " + ", ".join(f"{k} {v.get('status')} ({v.get('seconds', 0):.1f}s)" for k, v in m.get("stages", {}).items())]
    return "\n".join(lines) + "\n"


def pareto_png(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import ScalarFormatter

    fig, ax = plt.subplots(figsize=(6.8, 4.4), dpi=110)
    targets = sorted({r["target"] for r in rows})
    colors = {t: plt.cm.tab10(i) for i, t in enumerate(targets)}
    markers = {("teacher", "fp32"): "s", ("student", "fp32"): "o", ("student", "int8"): "^", ("student", "fp16"): "D"}
    for r in rows:
        if r["p50_ms"] is None or r["top1"] is None:
            continue
        ax.scatter(r["p50_ms"], 100 * r["top1"], color=colors[r["target"]], s=60, edgecolor="black", linewidth=0.5,
                   marker=markers.get((r["model"], r["precision"]), "o"),
                   label=f"{r['target']} ({r['backend']}): {r['model']} {r['precision']}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("top-1 on the test split (%)")
    ax.set_title("accuracy vs latency (up-left is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def render(run: RunDir) -> dict[str, Any]:
    rows = collect(run)
    md = markdown(run, rows)
    report = {"run": str(run.root), "rows": rows, "stages": {k: {kk: v.get(kk) for kk in ("status", "seconds", "metrics")}
                                                            for k, v in run.manifest.get("stages", {}).items()}}
    write_json(run.root / "report.json", report)
    write_text(run.root / "report.md", md)
    if rows:
        pareto_png(rows, run.root / "pareto.png")
    report["markdown"] = md
    return report
