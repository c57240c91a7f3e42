"""Stage ``lower/<target>``: the deployable artifact for the target's runtime (``04-lower/<target>/``): an ORT QDQ
graph + session settings, an OpenVINO IR, or a TensorRT bundle (engines where TensorRT and the GPU are here), with
``build.json`` recording which int8 / low-bit kernels actually executed."""

from __future__ import annotations

from typing import Any

from edgekd import progress
from edgekd.fileio import write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register


@register
class Lower(Stage):
    name = "lower"
    per_target = True
    reads_data = True  # TensorRT's bundle carries the expected accuracy on the test split

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return [("quantize", profile), ("export", None)]

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        return {"precision": ctx.precision(profile)}

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        from edgekd.backends import LowerInputs, get_backend

        p = profile
        out = ctx.run.fresh_dir("lower", p.name)
        task, y = ctx.task, ctx.data.test.y
        inputs = LowerInputs(fp32_onnx=ctx.run.output("export", "student"), input_shape=list(ctx.input_shape),
                             test=(ctx.data.test.x, y), precision=ctx.precision(p),
                             score=lambda out: float(task.score(out, y[: len(out)], ctx.info)[task.primary]),
                             metric=task.primary, higher_is_better=bool(task.higher_is_better),
                             points_scale=float(task.points_scale), task_info={"task": task.name, **ctx.info})
        res = get_backend(p.backend).lower(ctx.run.output(f"quantize/{p.name}", "model"), p, out, inputs)
        if res.get("engine_note"):
            progress.log(f"lower/{p.name}: bundle written; {res['engine_note']}")
        build = {"backend": p.backend, "profile": p.name, "precision": ctx.precision(p),
                 **{k: v for k, v in res.items() if k not in ("files", "artifact")}, "artifact": ctx.run.rel(res["artifact"])}
        write_json(out / "build.json", build)
        outputs = {k: ctx.run.rel(v) for k, v in res["files"].items()}
        outputs["build"] = ctx.run.rel(out / "build.json")
        return StageResult(outputs, {"int8_kernels": sum(res.get("int8_kernels", {}).values())})
