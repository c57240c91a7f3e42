"""Precision planner (issue #18): which layers to keep in float so that INT8 stays within an accuracy budget, and
whether INT8 is worth shipping at all.

Every decision is taken on the target runtime's own quantized artifact: one calibration (ONNX Runtime
``quantize_static``, NNCF ``nncf.quantize``), then each variant is that INT8 model with the chosen layers' quantizers
removed and their float weights restored (:mod:`edgekd.quant.keep_float`; NNCF's accuracy control reverts layers the
same way), scored with the task's primary metric M on held-out validation samples:

    sensitivity(L) = M(INT8, L alone kept in float) − M(all INT8)          (in points: × 100 for a 0…1 metric)

measured on the first ``ranking_samples`` (300, NNCF's ranking subset) — it only orders the search; ties are broken
by how close the variant's outputs come to FP32's.

Search (greedy, in the spirit of NNCF's ``quantize_with_accuracy_control``, which reverts the quantizers of the
most sensitive groups one at a time until the drop is within ``max_drop``), each step judged on all ``samples``:
keep the k most sensitive layers in float for k = 0, 1, … until

    drop(k) = M(FP32) − M(INT8, k layers kept)  ≤  max_drop,

then ``extra`` more steps (a layer kept in float can also be faster: fewer Q/DQ pairs around a layer INT8 does not
speed up). Every candidate that meets the accuracy budget, all-INT8 and FP32 are timed on the target at batch 1 in
alternating rounds in one run; the fastest that meets both budgets is the plan — FP32 when no INT8 plan is faster.
On ONNX Runtime, layers the runtime's kernel profile finds slower in INT8 than in float (:mod:`edgekd.quant.layer_speed`)
are tried too, each in float on top of the plan (:meth:`edgekd.stages.plan.Plan.speed_candidates`).

The functions here take the quantizer, the scorer and the timer as callables, so they are tested on a real model
without the pipeline; :mod:`edgekd.stages.plan` wires them to a run.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgekd.errors import GateError

#: quantize(keep_float, out_dir) → the INT8 artifact's path
Quantizer = Callable[[Sequence[str], Path], Path]
#: score(artifact) → the primary metric on the validation samples
Scorer = Callable[[Path], float]
#: evaluate(artifact) → (the primary metric, the outputs' relative error against FP32) on the ranking samples
Evaluator = Callable[[Path], "tuple[float, float]"]
#: rerank(artifact, layers kept in float) → every layer, most error-adding first, measured on that artifact
Reranker = Callable[[Path, "list[str]"], "list[str]"]
#: time({name: artifact}) → {name: per-round batch-1 p50 ms}
Timer = Callable[[dict[str, Path]], dict[str, list[float]]]


@dataclass
class Metric:
    """How a metric value turns into the points a budget is stated in."""

    name: str
    higher_is_better: bool = True
    #: points per metric unit: 100 for the built-in 0…1 metrics (top-1, mAP, R²), 1 for a user metric
    scale: float = 100.0

    def drop(self, reference: float, value: float) -> float:
        """Points lost going from ``reference`` to ``value`` (negative: ``value`` is better)."""
        d = (reference - value) * self.scale
        return d if self.higher_is_better else -d


@dataclass
class Candidate:
    name: str
    precision: str
    keep_float: list[str]
    metric: float
    drop: float
    artifact: str | None = None
    p50_rounds_ms: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    meets_accuracy: bool = False
    meets_latency: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_sensitivity(layers: list[dict[str, str]], quantize: Quantizer, evaluate: Evaluator, work: Path,
                        metric: Metric, int8_metric: float, progress: Callable[[int, str], None] | None = None,
                        ) -> list[dict[str, Any]]:
    """Each layer kept in float alone: its metric, its ``gain`` over all-INT8 (points) and its ``output_error``
    (the variant's outputs against FP32's, :func:`relative_error`), most sensitive first: by gain, then — a metric
    on a few hundred samples moves in steps and ties — by output error, then graph order. Artifacts are written
    under ``work`` and removed as soon as they are scored."""
    rows = []
    for i, layer in enumerate(layers):
        if progress:
            progress(i, layer["name"])
        t0 = time.time()
        art = quantize([layer["name"]], work / f"layer-{i}")
        m, err = evaluate(art)
        shutil.rmtree(work / f"layer-{i}", ignore_errors=True)
        rows.append({**layer, "index": i, "metric": m, "gain": -metric.drop(int8_metric, m), "output_error": err,
                     "seconds": round(time.time() - t0, 2)})
    return sorted(rows, key=lambda r: (-round(r["gain"], 6), r["output_error"], r["index"]))


def relative_error(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Σ(y − y_fp)² / Σ y_fp²: how far a variant's outputs are from FP32's (task-agnostic; NNCF ranks its
    quantizer groups by a similar normalised MSE when the validation metric cannot be split per sample)."""
    a, b = np.asarray(outputs, dtype=np.float64).ravel(), np.asarray(reference, dtype=np.float64).ravel()
    return float(((a - b) ** 2).sum() / max((b ** 2).sum(), 1e-30))


def greedy_candidates(order: list[str], quantize: Quantizer, score: Scorer, work: Path, metric: Metric,
                      fp32_metric: float, int8: Candidate, max_drop: float, extra: int = 2,
                      max_kept: int | None = None, rerank: Reranker | None = None,
                      evaluate: Evaluator | None = None, shortlist: int = 1) -> list[Candidate]:
    """all-INT8, then the ``k`` most sensitive layers kept in float for k = 1, 2, …, stopping ``extra`` steps after
    the first candidate within ``max_drop`` (or after ``max_kept`` layers / every layer).

    With ``rerank`` (the one-pass proxy), each step that is still over budget orders the layers not yet kept again,
    on the candidate just scored: once the worst layer is in float, the next one shows (before, its error was noise
    on top of the first's). With ``evaluate`` and ``shortlist`` > 1, such a step measures the ``shortlist`` layers
    the order proposes — each added in float, scored on the ranking samples — and keeps the one that recovers most
    (ties: the outputs closest to FP32's, then the order): a proxy ranks by error where it lands, the metric by what
    it costs downstream."""
    found = [int8]
    met_at = 0 if int8.meets_accuracy else None
    limit = len(order) if max_kept is None else min(max_kept, len(order))
    remaining, keep = list(order), []
    last = int8.artifact
    for k in range(1, limit + 1):
        if met_at is not None and k > met_at + extra:
            break
        if met_at is None and rerank is not None and k > 1 and last is not None:
            fresh = [n for n in rerank(Path(last), list(keep)) if n in remaining]
            remaining = fresh + [n for n in remaining if n not in fresh]
        nxt = remaining[0]
        if met_at is None and evaluate is not None and shortlist > 1 and len(remaining) > 1:
            tried = []
            for i, name in enumerate(remaining[:shortlist]):
                m_i, err_i = evaluate(quantize(keep + [name], work / f"try-{k}-{i}"))
                shutil.rmtree(work / f"try-{k}-{i}", ignore_errors=True)
                tried.append((metric.drop(fp32_metric, m_i), err_i, i, name))  # the least lost first
            nxt = min(tried)[3]
        remaining.remove(nxt)
        keep = keep + [nxt]
        art = quantize(keep, work / f"keep-{k}")
        m = score(art)
        d = metric.drop(fp32_metric, m)
        found.append(Candidate(f"int8, {k} kept in float", "int8", list(keep), m, d, str(art), meets_accuracy=d <= max_drop))
        last = str(art)
        if met_at is None and d <= max_drop:
            met_at = k
    return found


def choose(candidates: list[Candidate], fp32: Candidate, max_drop: float, latency_budget_ms: float | None,
           timed: bool, min_speedup: float = 1.0) -> tuple[Candidate, str]:
    """The plan: the fastest candidate within both budgets (FP32 included: it meets any accuracy budget; an INT8 plan
    keeping more layers in float must beat one keeping fewer by ``min_speedup``, as INT8 must beat FP32), or, when
    latency cannot be measured here, the accuracy-meeting INT8 candidate with the fewest layers in float. Raises
    :class:`GateError` naming the best plan found when no candidate meets both budgets."""
    pool = [c for c in candidates if c.meets_accuracy] + [fp32]
    if not timed:
        c = next((c for c in pool if c.precision == "int8"), fp32)
        why = (f"{len(c.keep_float)} layer(s) kept in float bring the drop to {c.drop:.2f} pt (budget {max_drop:g}); "
               "latency is judged on the device" if c is not fp32
               else f"no INT8 plan tried is within {max_drop:g} pt")
        return c, why
    for c in candidates + [fp32]:
        c.meets_latency = None if latency_budget_ms is None or c.p50_ms is None else c.p50_ms <= latency_budget_ms
    ok = [c for c in pool if c.meets_latency is not False and c.p50_ms is not None]
    if not ok:
        best = min(pool, key=lambda c: c.p50_ms if c.p50_ms is not None else float("inf"))
        raise GateError(f"no plan meets both budgets ({max_drop:g} pt, {latency_budget_ms:g} ms): the best found is "
                        f"{best.name} at {best.drop:.2f} pt, {best.p50_ms:.3f} ms",
                        "raise --latency-budget-ms or --max-drop, or choose a smaller student")
    c = min(ok, key=lambda c: c.p50_ms)  # type: ignore[arg-type, return-value]
    if c is not fp32:
        # the same margin between INT8 plans: one that keeps more layers in float wins only when it is faster than the
        # plans keeping fewer by more than the timing noise; otherwise the fewest layers in float (the plan closest to
        # all-INT8, the search's own preference), ties broken by speed
        near = [x for x in ok if x.precision == "int8" and x.p50_ms <= c.p50_ms * min_speedup]  # type: ignore[operator]
        c = min(near, key=lambda x: (len(x.keep_float), x.p50_ms))
    if c is fp32:
        int8s = [x for x in ok if x.precision == "int8"]
        why = ("no INT8 candidate is within the accuracy budget" if not int8s else
               f"no INT8 plan within {max_drop:g} pt is faster than FP32 (best: {min(int8s, key=lambda x: x.p50_ms).p50_ms:.3f} "
               f"vs {fp32.p50_ms:.3f} ms)")
        return c, why
    if fp32 in ok and fp32.p50_ms < c.p50_ms * min_speedup:
        # FP32 loses nothing: an INT8 plan must be faster by a margin the timing can tell from noise to be worth it
        return fp32, (f"the fastest INT8 plan within {max_drop:g} pt is only {fp32.p50_ms / c.p50_ms:.2f}× faster than "
                      f"FP32 ({c.p50_ms:.3f} vs {fp32.p50_ms:.3f} ms; quantize.plan.min_speedup {min_speedup:g})")
    return c, (f"fastest within {max_drop:g} pt: {c.drop:.2f} pt, {c.p50_ms:.3f} ms vs FP32 {fp32.p50_ms:.3f} ms "
               f"({fp32.p50_ms / c.p50_ms:.2f}×)")
