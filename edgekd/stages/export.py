"""Stage ``export``: teacher and student to ONNX (``02-export/{teacher,student}.onnx``), each checked against
PyTorch on real inputs with ONNX Runtime (``parity.json``; a gate: past tolerance the stage fails with exit 3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekd import progress
from edgekd.fileio import atomic_path, write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register


@register
class Export(Stage):
    name = "export"
    reads_data = True

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return [("distill", None)]

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        return {"export": ctx.cfg.export.model_dump()}

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        from edgekd.exporters import parity
        from edgekd.exporters.onnx_export import export_onnx
        from edgekd.models.batching import make_batch_dynamic
        from edgekd.runtimes import make_runner

        cfg = ctx.cfg.export
        data = ctx.data
        out = ctx.run.fresh_dir("export")
        from edgekd.data.arrays import head

        x = head(data.test.x, cfg.parity_samples)  # read batch by batch (a uint8 split is not materialised whole)
        if len(x) < min(256, cfg.parity_samples):  # small test splits (data-free runs): top up from val, then train
            x = np.concatenate([x, data.val.x, data.train.x])[: cfg.parity_samples]
        if len(x) < min(256, cfg.parity_samples):
            progress.warn(f"export: parity checked on {len(x)} inputs only (the data has no more; 256 or more make the "
                          "check meaningful)")
        report: dict[str, Any] = {}
        outputs: dict[str, str] = {}
        distilled = ctx.distilled()
        names = ctx.task.output_names(ctx.info)
        for name in ("teacher", "student"):
            path = out / f"{name}.onnx"
            if name == "student" and not distilled and "teacher" in report:
                # distillation off: the deployed model is the teacher; its export and parity are not done twice
                with atomic_path(path) as tmp:
                    tmp.write_bytes((out / "teacher.onnx").read_bytes())
                report[name] = {**report["teacher"], "same_as": "teacher"}
                write_json(out / "parity.json", report)
                outputs[name] = ctx.run.rel(path)
                continue
            if name == "teacher":
                module = ctx.teacher.module
                info = ctx.teacher.write_onnx(path, ctx.input_shape, cfg.opset, cfg.exporter, names)
                if info.pop("as_is"):  # an ONNX teacher is exported as it is (its batch axis made symbolic when safe)
                    report[name] = {**info, "opset": opset_of(path)}
                    write_json(out / "parity.json", report)
                    outputs[name] = ctx.run.rel(path)
                    continue
            else:
                module = ctx.student_module()
                info = export_onnx(module, ctx.input_shape, path, cfg.opset, cfg.exporter, output_names=names,
                                   input_name=ctx.teacher.input_name)
            data, info["batch_dynamic"] = make_batch_dynamic(path.read_bytes())  # a batch-1 program exports batch 1
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            if not info["batch_dynamic"]:
                progress.warn(f"export: {name}.onnx keeps a fixed batch of 1 (its graph hard-codes it); it is "
                              "benchmarked at batch 1 only")
            ref = ctx.task.predict(module, x, ctx.info)
            got = parity.run_batched(make_runner("onnxruntime", path, {"graph_optimization": "all"}), x)
            stats = ctx.task.parity(ref, got, ctx.info)
            report[name] = {**info, "parity_torch_vs_onnxruntime": stats}
            write_json(out / "parity.json", report)
            parity.check(stats, what=f"{name}.onnx vs PyTorch", atol=cfg.atol, min_agreement=cfg.min_top1_agreement)
            outputs[name] = ctx.run.rel(path)
        outputs["parity"] = ctx.run.rel(out / "parity.json")
        metrics = {f"{n}_{k}": v for n, r in report.items() for k, v in r.get("parity_torch_vs_onnxruntime", {}).items()
                   if k != "samples" and isinstance(v, (int, float))}
        metrics["exporter"] = report["student"]["exporter"]
        metrics["opset"] = report["student"]["opset"]
        return StageResult(outputs, metrics)


def opset_of(path) -> int:  # noqa: ANN001
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
