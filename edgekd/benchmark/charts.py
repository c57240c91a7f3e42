"""The run report's pictures: ``pareto.png`` (the task's metric against batch-1 p50, one marker per artifact) and
``latency.png`` (the per-call latency distribution). Each is written to a temporary name, then renamed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: how a task's primary metric is headed in tables and plots
METRIC_LABELS = {"top1": "top-1", "fidelity_r2": "fidelity R²", "map": "mAP@[.5:.95]"}


def latency_png(rows: list[dict[str, Any]], path: Path) -> bool:
    """Latency distribution (batch 1) per artifact: a violin of the recorded per-call times."""
    data = [(f"{r['target']}\n{r['model']} {r['precision']}", r["times_ms"]) for r in rows if r.get("times_ms")]
    if not data:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(data)), 4.0), dpi=110)
    ax.violinplot([d for _, d in data], showmedians=True, showextrema=False)
    ax.set_xticks(range(1, len(data) + 1), [n for n, _ in data], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("latency per call, batch 1 (ms, log)")
    ax.set_title("latency distribution")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return True


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
        if r["p50_ms"] is None or r["metric"] is None:
            continue
        ax.scatter(r["p50_ms"], 100 * r["metric"], color=colors[r["target"]], s=60, edgecolor="black", linewidth=0.5,
                   marker=markers.get((r["model"], r["precision"]), "o"),
                   label=f"{r['target']} ({r['backend']}): {r['model']} {r['precision']}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(ScalarFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    name = rows[0].get("metric_name", "top1") if rows else "top1"
    ax.set_ylabel(f"{METRIC_LABELS.get(name, name)} on the test split (×100)")
    ax.set_title("accuracy vs latency (up-left is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
