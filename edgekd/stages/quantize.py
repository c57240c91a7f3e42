"""Stage ``quantize/<target>``: INT8 with the target runtime's own tool on real calibration samples, or the QAT
model when ``quantize.qat`` is set; FP32/FP16 targets copy the FP32 export (the runtime converts at build time).

Gate: the INT8 student's agreement with its FP32 export on the val split (real data the student never trained on)
must reach the task's threshold (``quantize.min_top1_agreement`` for a classifier); below it the stage fails with exit
3, keeping ``calibration.json``. With a precision plan (``quantize.plan``) the stage ships the plan's artifact as the
planner scored it (the sensitivity stage's calibration, the plan's layers reverted to float), and the gate is the
plan's own budget: the primary metric may lose at most ``max_drop`` points on the val samples.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgekd import progress
from edgekd.fileio import write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register


@register
class Quantize(Stage):
    name = "quantize"
    per_target = True
    reads_data = True

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return ([("export", None)] + ([("quantize/qat", None)] if ctx.cfg.quantize.qat != "none" else [])
                + ([("sensitivity", profile), ("plan", profile)] if ctx.planned(profile) else []))

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        from edgekd.quant.calibration import load_recipe
        from edgekd.quant.ptq import ORT_RECIPE

        return {"quantize": ctx.cfg.quantize.model_dump(), "precision": ctx.precision(profile),
                "recipe": load_recipe(ctx.cfg.quantize.calibration).model_dump(), "ort_recipe": ORT_RECIPE}

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        from edgekd.backends import get_backend

        p = profile
        out = ctx.run.fresh_dir("quantize", p.name)
        if ctx.cfg.quantize.qat != "none":
            shutil.copyfile(ctx.run.output("quantize/qat", "model"), out / "model.onnx")
            info = {"tool": "edgekd QAT (fake-quant → ONNX Q/DQ)", "precision": "int8", "source": "quantize/qat"}
            write_json(out / "calibration.json", info)
            return StageResult({"model": ctx.run.rel(out / "model.onnx"), "calibration": ctx.run.rel(out / "calibration.json")},
                               {"precision": "int8", "tool": info["tool"]})
        from edgekd.exporters import parity
        from edgekd.quant.calibration import load_recipe
        from edgekd.runtimes import make_runner

        fp32 = ctx.run.output("export", "student")
        prec = ctx.precision(p)
        outputs: dict[str, str] = {}
        if prec in ("fp32", "fp16"):  # fp16: the runtime (TensorRT, an OpenVINO GPU/NPU) converts at build time
            shutil.copyfile(fp32, out / "model.onnx")
            info: dict[str, Any] = {"tool": "none", "precision": prec}
            outputs["model"] = ctx.run.rel(out / "model.onnx")
        else:
            recipe = load_recipe(ctx.cfg.quantize.calibration)
            data = ctx.data
            cx, cy = ctx.task.calibration(data, recipe, ctx.cfg.quantize.calibration_size)
            wanted = ctx.cfg.quantize.calibration_size or recipe.count
            if len(cx) < wanted:
                progress.warn(f"quantize/{p.name}: calibration asked for {wanted} samples ({recipe.name}) but the "
                              f"{recipe.source} split has {len(cx)}; ranges come from those {len(cx)}")
            plan = self.plan(ctx, p)
            keep = plan["chosen"]["keep_float"] if plan else []
            recorded = bool(plan) and "int8_record" in (ctx.run.record(f"sensitivity/{p.name}") or {}).get("outputs", {})
            progress.log(f"quantize/{p.name}: int8 PTQ with {len(cx)} calibration samples ({recipe.name})"
                         + (" (the sensitivity stage's calibration)" if recorded else "")
                         + (f", {len(keep)} layer(s) kept in float by the plan" if plan else ""))
            if recorded:
                q = plan_artifact(ctx, p, fp32, out, keep)
            else:  # no plan, or a sensitivity stage from an edgekd that did not record its calibration: calibrate
                q = get_backend(p.backend).quantize(fp32, out, cx, p, keep_float=keep)
            info = q.info
            if not plan and ctx.cfg.quantize.input_layers_float == "auto":  # a plan decides its float layers itself
                info["input_layers_float"] = input_layers_float(ctx, p, fp32, Path(q.files["model"]), cx[:1], out)
            outputs.update({k: ctx.run.rel(v) for k, v in q.files.items()})
            info.update(precision="int8", calibration={"recipe": recipe.model_dump(), "samples": int(len(cx)),
                                                       "samples_requested": int(wanted),
                                                       **ctx.task.describe_calibration(cy, ctx.info)})
            # int8 vs fp32 on the val split (real data the student never trained on)
            ref = parity.run_batched(make_runner("onnxruntime", fp32, {"graph_optimization": "all"}), data.val.x)
            got = parity.run_batched(make_runner(q.check_backend, q.files["model"], q.check_settings), data.val.x)
            info["parity_int8_vs_fp32_val"] = ctx.task.parity(ref, got, ctx.info, targets=data.val.y)
            if plan:
                info["plan"] = plan_gate(ctx, plan, ref, got)
        write_json(out / "calibration.json", info)  # before the gate, so a failed stage keeps its evidence
        if "plan" in info:
            g = info["plan"]
            if g["drop"] > g["max_drop"]:
                from edgekd.errors import GateError

                raise GateError(f"int8 model for {p.name} loses {g['drop']:.2f} pt of {g['metric']} on val with the "
                                f"plan (budget {g['max_drop']:g})", "raise --max-drop, or plan on more val samples "
                                "(quantize.plan.samples)")
        elif "parity_int8_vs_fp32_val" in info:
            parity.check(info["parity_int8_vs_fp32_val"], what=f"int8 model for {p.name} vs fp32", atol=None,
                         min_agreement=ctx.task.int8_gate(ctx.cfg.quantize))
        outputs["calibration"] = ctx.run.rel(out / "calibration.json")
        metrics = {"precision": prec, "tool": info["tool"]}
        if "parity_int8_vs_fp32_val" in info:
            metrics["agreement_vs_fp32"] = info["parity_int8_vs_fp32_val"]["agreement"]
            if "top1_agreement" in info["parity_int8_vs_fp32_val"]:
                metrics["top1_agreement_vs_fp32"] = info["parity_int8_vs_fp32_val"]["top1_agreement"]
        return StageResult(outputs, metrics)

    @staticmethod
    def plan(ctx, p) -> dict[str, Any] | None:  # noqa: ANN001
        import json

        return json.loads(ctx.run.output(f"plan/{p.name}", "plan").read_text()) if ctx.planned(p) else None


def input_layers_float(ctx, p, fp32: Path, int8: Path, x1, out: Path) -> dict[str, Any]:  # noqa: ANN001
    """:func:`edgekd.quant.input_float.choose_input_layers_float` with this target's timer (bench's settings,
    5 alternating rounds in one worker process, as the precision planner times its candidates)."""
    from edgekd.backends import get_backend
    from edgekd.benchmark.subprocess_worker import run_alternating
    from edgekd.quant.input_float import choose_input_layers_float
    from edgekd.stages.bench import timing_settings

    def timer(models: list[Path]) -> list[list[float]]:
        return run_alternating(p.backend, models, timing_settings(ctx, p), p.measure.warmup, 100, 5)["p50_ms"]

    rec = choose_input_layers_float(get_backend(p.backend), p, fp32, int8, x1, out / ".input-float", timer)
    if "proposed" in rec:
        progress.log(f"quantize/{p.name}: input layers: {rec['reason']}")
    return rec


def plan_artifact(ctx, p, fp32: Path, out: Path, keep: list[str]):  # noqa: ANN001, ANN201
    """The plan's INT8 model, exactly as the planner scored it: the sensitivity stage's one calibration with the
    plan's layers put back in float by the same graph edit (:meth:`Backend.float_reverter`). Calibrating again
    would reach the same ranges at the cost of a second PTQ run (most of a small model's quantize stage)."""
    import json

    from edgekd.backends import Quantized, get_backend

    rec = json.loads(ctx.run.output(f"sensitivity/{p.name}", "int8_record").read_text())
    src = ctx.run.output(f"sensitivity/{p.name}", "int8_model")
    files = {k: out / name for k, name in rec["files"].items()}
    if keep:
        work = out / ".work"
        get_backend(p.backend).float_reverter(src, fp32, work)(keep, files["model"])
        shutil.rmtree(work, ignore_errors=True)
    else:
        for k, name in rec["files"].items():
            shutil.copyfile(src.parent / name, files[k])
    info = {**rec["info"], "kept_float": list(keep),
            "calibration_source": f"sensitivity/{p.name}: its calibration, the plan's layers reverted to float"}
    return Quantized(info, files, rec["check_backend"], rec["check_settings"])


def plan_gate(ctx, plan: dict[str, Any], ref, got) -> dict[str, Any]:  # noqa: ANN001
    """The plan's budget checked on the INT8 model the stage built: the drop of the primary metric against the FP32
    export on the plan's val samples."""
    from edgekd.quant.planner import Metric

    n = plan["samples"]
    y = ctx.data.val.y[:n]
    m = Metric(plan["metric"], plan["higher_is_better"], plan["points_scale"])
    task = ctx.task
    fp32 = float(task.score(ref[:n], y, ctx.info)[task.primary])
    int8 = float(task.score(got[:n], y, ctx.info)[task.primary])
    return {"metric": m.name, "fp32": fp32, "int8": int8, "drop": m.drop(fp32, int8), "max_drop": plan["budget"]["max_drop"],
            "samples": int(len(y)), "kept_float": plan["chosen"]["keep_float"], "reason": plan["reason"]}
