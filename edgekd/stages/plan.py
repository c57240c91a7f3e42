"""Stage ``plan/<target>``: the precision plan (:mod:`edgekd.quant.planner`) from the layer sensitivities: the
fewest layers kept in float so that INT8 is within ``quantize.plan.max_drop`` points of the FP32 export on val, every
candidate within that budget timed on the target at batch 1 against all-INT8 and FP32 in alternating rounds, and the
fastest within both budgets chosen (FP32 — TensorRT: FP16 — when no INT8 plan is faster). Writes ``plan.json`` and
``pareto.png`` (metric vs latency of the plans tried); the quantize stage builds the chosen plan."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from edgekd import progress
from edgekd.fileio import write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register


@register
class Plan(Stage):
    name = "plan"
    per_target = True
    reads_data = True

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return [("sensitivity", profile), ("export", None)]

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        from edgekd.stages.sensitivity import plan_config

        return {**plan_config(ctx, profile), "plan": ctx.cfg.quantize.plan.model_dump(),
                "timing": {k: getattr(ctx.cfg.bench, k) for k in ("threads", "warmup_seconds")}}

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        import json

        from edgekd.benchmark.envinfo import capture as describe_environment
        from edgekd.errors import GateError
        from edgekd.quant.planner import Candidate, choose, greedy_candidates
        from edgekd.stages.sensitivity import PlanTools

        p, cfg = profile, ctx.cfg.quantize.plan
        out = ctx.run.fresh_dir("plan", p.name)
        t0 = time.time()
        sens = json.loads(ctx.run.output(f"sensitivity/{p.name}", "sensitivity").read_text())
        tools = PlanTools(ctx, p)
        m = tools.metric
        fp32_metric, int8_metric = sens["fp32"], sens["int8"]
        int8_src = ctx.run.output(f"sensitivity/{p.name}", "int8_model")
        tools.use_int8(int8_src, (sens["check"]["backend"], sens["check"]["settings"]), out / "candidates")
        d0 = m.drop(fp32_metric, int8_metric)
        int8 = Candidate("all int8", "int8", [], int8_metric, d0, str(int8_src), meets_accuracy=d0 <= cfg.max_drop)
        order = [r["name"] for r in sens["layers"]]
        work = out / "candidates"
        cands = greedy_candidates(order, tools.quantize, tools.score, work, m, fp32_metric, int8, cfg.max_drop,
                                  extra=cfg.extra, max_kept=cfg.max_kept,
                                  rerank=self.proxy_reranker(tools, cfg, work) if sens.get("ranking") == "proxy" else None,
                                  evaluate=tools.rank, shortlist=cfg.shortlist if sens.get("ranking") == "proxy" else 1)
        timed = tools.backend.can_time(p)
        probe = self.speed_candidates(tools, p, cands, cfg, work, fp32_metric) if timed and cfg.speed_probe else None
        if probe:
            cands += probe["candidates"]
        ref_prec = tools.backend.reference_precision
        fp32 = Candidate(ref_prec, ref_prec, [], fp32_metric, 0.0, str(tools.fp32), meets_accuracy=True)
        search_s = time.time() - t0
        settings: dict[str, Any] = {}
        if timed:
            settings = self.time(ctx, p, [int8] + [c for c in cands[1:] if c.meets_accuracy] + [fp32], cfg)
        try:
            chosen, reason = choose(cands, fp32, cfg.max_drop, cfg.latency_budget_ms, timed, cfg.min_speedup)
            failure = None
        except GateError as e:
            chosen, reason, failure = None, e.message, e
        res = {"target": p.name, "backend": p.backend, "metric": m.name, "points_scale": m.scale,
               "higher_is_better": m.higher_is_better, "samples": sens["samples"], "budget": cfg.model_dump(),
               "fp32": fp32_metric, "timed": timed, "timing_settings": settings,
               "slower_in_int8": probe["layers"] if probe else None,
               "timing_note": None if timed else f"{p.backend} ({p.name}) cannot be timed here: the plan meets the "
                                                 "accuracy budget, its speed is judged on the device",
               "candidates": [c.as_dict() for c in cands + [fp32]],
               "chosen": chosen.as_dict() if chosen else None, "reason": reason,
               "seconds": round(time.time() - t0, 1), "search_seconds": round(search_s, 1),
               "timing_seconds": round(time.time() - t0 - search_s, 1), "sensitivity_seconds": sens["seconds"],
               "environment": describe_environment() if timed else None}
        for c in res["candidates"] + ([res["chosen"]] if chosen else []):
            c.pop("artifact", None)  # the candidates' files are removed below; quantize rebuilds the chosen plan
        write_json(out / "plan.json", res)
        pareto_chart(res, out / "pareto.png")
        shutil.rmtree(work, ignore_errors=True)
        if failure is not None:
            raise failure
        assert chosen is not None
        progress.log(f"plan/{p.name}: {chosen.name} ({reason})")
        return StageResult({"plan": ctx.run.rel(out / "plan.json"), "chart": ctx.run.rel(out / "pareto.png")},
                           {"precision": chosen.precision, "kept_float": len(chosen.keep_float), "drop": chosen.drop,
                            "p50_ms": chosen.p50_ms, "reason": reason})

    @staticmethod
    def proxy_reranker(tools, cfg, work: Path):  # noqa: ANN001, ANN205
        """The greedy search's re-ranking: the proxy (the error each layer adds) on the candidate just scored."""
        layers = tools.layers()

        def rerank(artifact: Path, kept: list[str]) -> list[str]:
            rows = tools.proxy(layers, cfg.proxy_samples, work / "proxy", artifact)
            return [r["name"] for r in rows or []]

        return rerank

    @staticmethod
    def speed_candidates(tools, p, cands: list, cfg, work: Path, fp32_metric: float  # noqa: ANN001
                         ) -> dict[str, Any] | None:
        """Layers the target runtime's kernel profile finds slower in INT8 than in float
        (:meth:`Backend.slower_in_int8`), each kept in float alone on top of the plan with the fewest layers in float
        that meets the budget: the ``speed_probe`` most promising, as candidates to time. One at a time, not
        together: a layer in the middle of an INT8 graph kept in float adds a DQ/Q pair and layout reorders around
        it, which the per-kernel profile does not charge to it (on the det-s detector the stem alone in float is
        1.15× faster than all-INT8; the stem and the next depthwise layer together 0.86×). None: nothing to try."""
        from edgekd.quant.planner import Candidate

        base = next((c for c in cands if c.meets_accuracy), None)
        if base is None or tools.int8 is None:
            return None
        layers = [r["name"] for r in tools.layers()]
        rows = tools.backend.slower_in_int8(tools.int8, tools.fp32, layers, tools.x[:1], p, cfg.speed_margin)
        if rows is None:
            return None
        found = []
        for i, r in enumerate([r for r in rows if r["name"] not in base.keep_float][: cfg.speed_probe]):
            keep = base.keep_float + [r["name"]]
            art = tools.quantize(keep, work / f"speed-{i}")
            metric = tools.score(art)
            d = tools.metric.drop(fp32_metric, metric)
            name = f"{base.name if base.keep_float else 'all int8'} + {r['name']} in float (speed)"
            found.append(Candidate(name, "int8", keep, metric, d, str(art), meets_accuracy=d <= cfg.max_drop))
        return {"layers": rows, "candidates": found}

    @staticmethod
    def time(ctx, p, cands: list, cfg) -> dict[str, Any]:  # noqa: ANN001
        """Batch-1 p50 of each candidate: every one timed against the others in alternating rounds in one fresh
        worker process (:mod:`edgekd.benchmark.alternating`); the median over rounds is its p50."""
        import statistics

        from edgekd.benchmark.subprocess_worker import run_alternating
        from edgekd.stages.bench import timing_settings

        settings = timing_settings(ctx, p)
        progress.log(f"plan/{p.name}: timing {len(cands)} candidates, {cfg.rounds} alternating rounds")
        res = run_alternating(p.backend, [Path(c.artifact) for c in cands], settings, p.measure.warmup,
                              cfg.iterations, cfg.rounds)
        for c, rounds in zip(cands, res["p50_ms"]):
            c.p50_rounds_ms = [float(v) for v in rounds]
            c.p50_ms = float(statistics.median(c.p50_rounds_ms))
        return settings


def pareto_chart(res: dict[str, Any], path: Path) -> None:
    """The plans tried: metric against batch-1 p50 (when timed) or against layers kept in float."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    chosen = (res.get("chosen") or {}).get("name")
    for c in res["candidates"]:
        x = c["p50_ms"] if res["timed"] else len(c["keep_float"])
        if x is None:
            continue
        style = dict(marker="*", s=180, color="tab:red", zorder=3) if c["name"] == chosen else \
            dict(marker="o", s=40, color="tab:blue" if c["meets_accuracy"] else "tab:gray")
        ax.scatter([x], [c["metric"]], **style)
        ax.annotate(c["name"], (x, c["metric"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    limit = res["fp32"] - (1 if res["higher_is_better"] else -1) * res["budget"]["max_drop"] / res["points_scale"]
    ax.axhline(limit, color="tab:green", ls="--", lw=1, label=f"budget ({res['budget']['max_drop']:g} pt)")
    if res["timed"] and res["budget"].get("latency_budget_ms"):
        ax.axvline(res["budget"]["latency_budget_ms"], color="tab:orange", ls="--", lw=1, label="latency budget")
    ax.set_xlabel("batch-1 p50 (ms)" if res["timed"] else "layers kept in float")
    ax.set_ylabel(f"{res['metric']} (val, {res['samples']} samples)")
    ax.set_title(f"precision plans for {res['target']} ({res['backend']})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
