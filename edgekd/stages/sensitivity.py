"""Stage ``sensitivity/<target>``: which layers cost the task's primary metric in INT8, on the target runtime's own
artifact: one calibration (all-INT8), scored on the val split against FP32, then every quantizable layer ranked —
by default with a proxy from one pass of the INT8 and FP32 models (the error each layer's quantizers add at its
output, :mod:`edgekd.quant.layer_error`), or (``quantize.plan.ranking: measured``, and always without a plan) by
measuring each layer kept in float alone (:func:`edgekd.quant.planner.measure_sensitivity`). Writes
``sensitivity.json`` and a bar chart (``sensitivity.png``); ``edgekd sensitivity RUN --target T`` runs it alone, the
plan stage builds on it."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd import progress
from edgekd.fileio import write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register


class PlanTools:
    """The planner's quantizer, scorer and metric for one run and target: the backend's own PTQ on the quantize
    stage's calibration samples, once (:meth:`calibrate`); every "these layers in float" variant is a graph edit of
    that INT8 model (:meth:`Backend.float_reverter`). Plans are scored with the task's primary metric on the first
    ``samples`` val samples, layer sensitivities on the first ``ranking_samples`` of those."""

    def __init__(self, ctx, profile) -> None:  # noqa: ANN001
        from edgekd.backends import get_backend
        from edgekd.quant.planner import Metric

        self.ctx, self.profile = ctx, profile
        self.backend = get_backend(profile.backend)
        self.fp32 = ctx.run.output("export", "student")
        n = plan_samples(ctx) or len(ctx.data.val)
        self.x, self.y = ctx.data.val.x[:n], ctx.data.val.y[:n]
        k = min(ranking_samples(ctx), n)
        self.x_rank, self.y_rank = self.x[:k], self.y[:k]
        task = ctx.task
        self.metric = Metric(task.primary, bool(task.higher_is_better), float(task.points_scale))
        self.check: tuple[str, dict[str, Any]] | None = None
        self.int8: Path | None = None
        self.quantized = None  # the backend's Quantized record of the one calibration (calibrate)
        self._revert = None
        self._work = Path(".")
        self._fp32_rank: np.ndarray | None = None
        self._layers: list[dict[str, str]] | None = None

    def layers(self) -> list[dict[str, str]]:
        """The layers the backend's quantizer makes INT8 (:meth:`Backend.plan_layers`), read once."""
        if self._layers is None:
            self._layers = self.backend.plan_layers(self.fp32, self.profile)
        return self._layers

    def calibrate(self, out_dir: Path) -> Path:
        """The all-INT8 artifact, with the backend's own PTQ (the one calibration of a planner run) on the quantize
        stage's calibration samples."""
        from edgekd.quant.calibration import load_recipe

        out_dir.mkdir(parents=True, exist_ok=True)
        q_cfg = self.ctx.cfg.quantize
        calib_x, _ = self.ctx.task.calibration(self.ctx.data, load_recipe(q_cfg.calibration), q_cfg.calibration_size)
        with progress.muted():
            q = self.backend.quantize(self.fp32, out_dir, calib_x, self.profile)
        self.quantized = q
        self.use_int8(q.files["model"], (q.check_backend, q.check_settings), out_dir.parent / "work")
        return q.files["model"]

    def use_int8(self, int8: Path, check: tuple[str, dict[str, Any]], work: Path) -> None:
        """Make variants of ``int8`` (scored with ``check``'s runner), with scratch files under ``work``."""
        self.int8, self.check, self._revert, self._work = int8, check, None, work

    def quantize(self, keep_float: Sequence[str], out_dir: Path) -> Path:
        """The INT8 artifact with ``keep_float`` in float, made from the calibrated one without calibrating again."""
        assert self.int8 is not None, "calibrate (or use_int8) first"
        if not keep_float:
            return self.int8
        if self._revert is None:
            self._revert = self.backend.float_reverter(self.int8, self.fp32, self._work / "reverter")
        return self._revert(list(keep_float), out_dir / self.int8.name)

    def outputs(self, artifact: Path, x: np.ndarray | None = None, backend: str | None = None,
                settings: dict[str, Any] | None = None) -> np.ndarray:
        from edgekd.exporters.parity import run_batched
        from edgekd.runtimes import make_runner

        if backend is None:
            assert self.check is not None, "quantize before scoring an INT8 artifact"
            backend, settings = self.check
        return run_batched(make_runner(backend, artifact, settings or {}), self.x if x is None else x)

    def score(self, artifact: Path) -> float:
        """The primary metric on the plan's samples (what decisions are taken on)."""
        return self.value(self.outputs(artifact), self.y)

    def rank(self, artifact: Path) -> tuple[float, float]:
        """(the primary metric, the outputs' relative error against FP32) on the ranking samples."""
        from edgekd.quant.planner import relative_error

        if self._fp32_rank is None:
            self._fp32_rank = self.outputs(self.fp32, self.x_rank, "onnxruntime", {"graph_optimization": "all"})
        out = self.outputs(artifact, self.x_rank)
        return self.value(out, self.y_rank), relative_error(out, self._fp32_rank)

    def value(self, outputs: np.ndarray, y: np.ndarray) -> float:
        return float(self.ctx.task.score(outputs, y, self.ctx.info)[self.ctx.task.primary])

    def proxy(self, layers: list[dict[str, str]], samples: int, work: Path, artifact: Path | None = None
              ) -> list[dict[str, Any]] | None:
        """Layers by the error their quantizers add in ``artifact`` (default: all-INT8;
        :meth:`Backend.layer_errors`), largest first; None when the backend cannot tell."""
        artifact = artifact or self.int8
        assert artifact is not None, "calibrate first"
        found = self.backend.layer_errors(artifact, self.fp32, [r["name"] for r in layers], self.x[:samples],
                                          self.profile, work)
        if found is None:
            return None
        index = {r["name"]: i for i, r in enumerate(layers)}
        rows = [{**layers[index[r["name"]]], **r, "index": index[r["name"]], "gain": None} for r in found]
        return sorted(rows, key=lambda r: (-r["added_error"], r["index"]))

    def fp32_metric(self) -> float:
        return self.value(self.outputs(self.fp32, None, "onnxruntime", {"graph_optimization": "all"}), self.y)


def plan_samples(ctx) -> int | None:  # noqa: ANN001
    plan = ctx.cfg.quantize.plan
    return plan.samples if plan is not None else None


def ranking_samples(ctx) -> int:  # noqa: ANN001
    """Val samples a layer's sensitivity is scored on (``quantize.plan.ranking_samples``; 300 without a plan)."""
    from edgekd.config import PlanConfig

    plan = ctx.cfg.quantize.plan
    return plan.ranking_samples if plan is not None else PlanConfig.model_fields["ranking_samples"].default


def ranking_mode(ctx) -> tuple[str, int]:  # noqa: ANN001
    """("proxy" | "measured", proxy samples): a plan's ``quantize.plan.ranking``; without a plan (``edgekd
    sensitivity`` on a run that has none) every layer is measured — the per-layer analysis is then the point."""
    plan = ctx.cfg.quantize.plan
    return (plan.ranking, plan.proxy_samples) if plan is not None else ("measured", 0)


def plan_config(ctx, profile) -> dict[str, Any]:  # noqa: ANN001
    """What the planner's measurements depend on: the calibration (as the quantize stage reads it), the val samples,
    the task's metric."""
    from edgekd.quant.calibration import load_recipe
    from edgekd.quant.ptq import ORT_RECIPE

    q = ctx.cfg.quantize
    return {"calibration": q.calibration, "calibration_size": q.calibration_size,
            "recipe": load_recipe(q.calibration).model_dump(), "ort_recipe": ORT_RECIPE, "samples": plan_samples(ctx),
            "ranking_samples": ranking_samples(ctx), "variants": "graph edit of one calibration",
            "ranking": ranking_mode(ctx),
            "rank": "all" if q.plan is None or q.plan.rank_all else f"unless all-int8 is within {q.plan.max_drop:g}",
            "metric": ctx.run.manifest["inputs"]["model"].get("metric_sha256") if ctx.cfg.metric else ctx.task.primary}


@register
class Sensitivity(Stage):
    name = "sensitivity"
    per_target = True
    reads_data = True

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return [("export", None)]

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        return plan_config(ctx, profile)

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        from edgekd.quant.planner import measure_sensitivity

        p = profile
        out = ctx.run.fresh_dir("sensitivity", p.name)
        t0 = time.time()
        tools = PlanTools(ctx, p)
        layers = tools.layers()
        fp32 = tools.fp32_metric()
        t_cal = time.time()
        int8_path = tools.calibrate(out / "int8")
        calibration_s = time.time() - t_cal  # the quantize stage ships from this calibration: PTQ's own cost
        int8 = tools.score(int8_path)
        m = tools.metric
        work = out / "work"
        plan = ctx.cfg.quantize.plan
        skipped = None
        if plan is not None and not plan.rank_all and m.drop(fp32, int8) <= plan.max_drop:
            # keeping layers in float only buys accuracy, which the plan does not need: its choice is all-INT8 or
            # FP32 by speed, so ranking every layer (most of the planner's time on a detector) is skipped
            skipped = (f"all-INT8 is within the plan's budget ({m.drop(fp32, int8):+.2f} ≤ {plan.max_drop:g} pt): layers "
                       "not ranked (quantize.plan.rank_all: true ranks them)")
        mode, proxy_n = ranking_mode(ctx)
        int8_rank = int8_err = None
        rows: list[dict[str, Any]] = []
        if not skipped and mode == "proxy":
            found = tools.proxy(layers, proxy_n, work / "proxy")
            if found is None:
                mode = "measured"  # this backend has no proxy
            else:
                rows = found
        how = (skipped if skipped else f"each layer ranked by the error it adds on {min(proxy_n, len(tools.y))} samples"
               if mode == "proxy" else f"each layer kept in float alone, scored on {len(tools.y_rank)}")
        progress.log(f"sensitivity/{p.name}: {len(layers)} layers; {m.name} fp32 {fp32:.4f}, all-int8 {int8:.4f} "
                     f"({m.drop(fp32, int8):+.2f} pt) on {len(tools.y)} val samples; {how}")
        if not skipped and mode == "measured":
            int8_rank, int8_err = tools.rank(int8_path)  # the reference each layer's gain is measured against
            with progress.bar(f"sensitivity/{p.name}: each layer kept in float alone", len(layers)) as bar:
                rows = measure_sensitivity(layers, tools.quantize, tools.rank, work, m, int8_rank,
                                           progress=lambda i, name: bar.update(1 if i else 0, info=name[-40:]))
                bar.update(1)
        shutil.rmtree(work, ignore_errors=True)
        res = {"target": p.name, "backend": p.backend, "metric": m.name, "higher_is_better": m.higher_is_better,
               "points_scale": m.scale, "samples": int(len(tools.y)), "fp32": fp32, "int8": int8,
               "ranking": None if skipped else mode,
               "proxy_samples": int(min(proxy_n, len(tools.y))) if mode == "proxy" and not skipped else None,
               "ranking_samples": int(len(tools.y_rank)), "int8_ranking": int8_rank, "int8_output_error": int8_err,
               "int8_drop": m.drop(fp32, int8), "layers": rows, "skipped": skipped, "seconds": round(time.time() - t0, 1),
               "calibration_seconds": round(calibration_s, 1),
               "check": {"backend": tools.check[0], "settings": tools.check[1]} if tools.check else None}
        write_json(out / "sensitivity.json", res)
        q = tools.quantized
        write_json(out / "int8" / "quantized.json",  # what the quantize stage ships the plan from (no new calibration)
                   {"info": q.info, "files": {k: v.name for k, v in q.files.items()}, "check_backend": q.check_backend,
                    "check_settings": q.check_settings})
        chart = out / "sensitivity.png"
        sensitivity_chart(res, chart)
        outputs = {"sensitivity": ctx.run.rel(out / "sensitivity.json"), "chart": ctx.run.rel(chart),
                   "int8_model": ctx.run.rel(int8_path), "int8_record": ctx.run.rel(out / "int8" / "quantized.json")}
        top = rows[0] if rows else None
        return StageResult(outputs, {"layers": len(rows), "fp32": fp32, "int8": int8, "int8_drop": res["int8_drop"],
                                     "most_sensitive": top["name"] if top else None,
                                     "most_sensitive_gain": top["gain"] if top else None,
                                     "ranking": res["ranking"]})


def sensitivity_table(res: dict[str, Any], top: int) -> str:
    """``sensitivity.json`` for a person: the headline, then the ``top`` layers as a Markdown table (the proxy's
    error columns, or the measured points)."""
    lines = [f"{res['target']} ({res['backend']}): {res['metric']} fp32 {res['fp32']:.4f}, all-int8 {res['int8']:.4f} "
             f"({-res['int8_drop']:+.2f} pt) on {res['samples']} val samples, {len(res['layers'])} layers, {res['seconds']:.0f} s"]
    if res.get("skipped"):
        lines.append(res["skipped"])
    if res.get("ranking") == "proxy":
        lines += [f"ranked by the error each layer's quantizers add at its output, on {res['proxy_samples']} samples "
                  "(a proxy; --ranking measured scores each layer kept in float)",
                  "| layer | op | error added (relative MSE) | error at its output |", "|---|---|---|---|"]
        lines += [f"| {r['name']} | {r['op']} | {r['added_error']:.3g} | {r['output_error']:.3g} |" for r in res["layers"][:top]]
    else:
        lines += ["| layer | op | points recovered in float |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['op']} | {r['gain']:+.2f} |" for r in res["layers"][:top]]
    return "\n".join(lines)


def sensitivity_chart(res: dict[str, Any], path: Path, top: int = 25) -> None:
    """Horizontal bars: the points each layer recovers when it alone is kept in float (most sensitive on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["layers"][:top]
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(len(rows), 3) + 1.2))
    if not rows:
        ax.text(0.5, 0.5, res.get("skipped") or "no quantizable layers", ha="center", va="center", wrap=True, fontsize=8)
        ax.set_axis_off()
    names = [_short(r["name"]) for r in rows][::-1]
    proxy = res.get("ranking") == "proxy"
    vals = [r["added_error"] if proxy else r["gain"] for r in rows][::-1]
    ax.barh(names, vals, color=["tab:red" if v > 0 else "tab:gray" for v in vals])
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("error the layer's quantizers add at its output (relative MSE vs FP32; ranking proxy)"
                  if proxy else f"{res['metric']} recovered by keeping the layer in float (points)", fontsize=8)
    ax.set_title(f"{res['target']}: all-INT8 loses {res['int8_drop']:.2f} pt against FP32 ({res['samples']} val samples)", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
