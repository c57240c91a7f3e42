"""The report's side tables (``report.md``): the thread sweep and the batch-N throughput, from report rows."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def thread_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The thread sweep (:mod:`edgekd.benchmark.threads`): batch-1 p50 per thread count, one process, alternating."""
    swept = [r for r in rows if r.get("threads_sweep")]
    if not swept:
        return []
    counts = sorted({int(t) for r in swept for t in r["threads_sweep"]["p50_ms"]})
    out = ["", "Thread counts (batch-1 p50 ms; every artifact at every count in one process, alternating rounds; the "
           "table above uses the profile's count):", "",
           "| target | model | precision | " + " | ".join(f"{t} thr" for t in counts) + " | fastest | profile's |",
           "|---|---|---|" + "---|" * (len(counts) + 2)]
    for r in swept:
        sw = r["threads_sweep"]
        cells = " | ".join(_fmt(sw["p50_ms"].get(str(t)), ".3f") for t in counts)
        out.append(f"| {r['target']} | {r['model']} | {r['precision']} | {cells} | {sw['best_threads']} | {r.get('threads')} |")
    return out + [""]


def throughput_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Throughput at every batch size the profile measures (inferences per second = batch × 1000 / p50 ms of that
    batch, :func:`edgekd.benchmark.stats.summarize`): the batch-1 table above is latency, this is capacity."""
    if not any(len(r.get("throughput_per_s") or {}) > 1 for r in rows):
        return []  # batch 1 only: the latency table already says it
    measured = [r for r in rows if r.get("throughput_per_s")]
    batches = sorted({int(b) for r in measured for b in r["throughput_per_s"]})
    out = ["", "Throughput (inferences per second at each batch size, profile's thread count):", "",
           "| target | model | precision | " + " | ".join(f"batch {b}" for b in batches) + " |",
           "|---|---|---|" + "---|" * len(batches)]
    for r in measured:
        tp = {int(b): v for b, v in r["throughput_per_s"].items()}
        out.append(f"| {r['target']} | {r['model']} | {r['precision']} | "
                   + " | ".join(_fmt(tp.get(b), ",.0f") for b in batches) + " |")
    return out + [""]
