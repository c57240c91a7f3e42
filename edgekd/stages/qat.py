"""Stage ``quantize/qat`` (target-independent): quantization-aware training of the fake-quant student from the FP
student (QAT-KD, optionally with Teacher Intervention), exported as a Q/DQ ONNX graph that each target's quantize
stage takes. Gate: the Q/DQ graph on ONNX Runtime's reference kernels and on OpenVINO must agree with the torch
fake-quant model on the test split."""

from __future__ import annotations

from typing import Any

from edgekd import progress
from edgekd.fileio import write_json
from edgekd.rundir import StageResult
from edgekd.runner import Stage, register

QAT_FIELDS = {"qat", "bits", "ti_mode", "ti_steps", "ti_blocks", "qat_steps", "qat_lr", "qat_batch_size", "act_quantizer",
              "first_last", "keep_fp", "qat_parity_min_agreement", "qat_loss_set", "ternary_scale"}


@register
class QAT(Stage):
    name = "quantize/qat"
    reads_data = True

    def needs(self, ctx, profile):  # noqa: ANN001, ANN201
        return [("distill", None)]

    def config(self, ctx, profile) -> dict[str, Any]:  # noqa: ANN001
        # everything the stage reads: its quantize fields, the export opset and the seed (the old hand-built key
        # left out the last two, so a stale QAT result was reused after either changed: issue #16)
        return {"quantize": ctx.cfg.quantize.model_dump(include=QAT_FIELDS), "opset": ctx.cfg.export.opset,
                "seed": ctx.cfg.distill.seed}

    def run(self, ctx, profile, key: str) -> StageResult:  # noqa: ANN001
        import torch

        from edgekd.exporters import parity
        from edgekd.exporters.onnx_export import export_onnx
        from edgekd.fileio import atomic_path
        from edgekd.quant.intervention import find_attention
        from edgekd.quant.qat import QATConfig, parse_bits, quantized_copy, set_export_mode
        from edgekd.quant.qat_train import QATTrainConfig, train_qat
        from edgekd.runtimes import make_runner

        q = ctx.cfg.quantize
        out = ctx.run.fresh_dir("quantize", "qat")
        fp = ctx.student_module()
        qcfg = QATConfig(**parse_bits(q.bits), act_quantizer=q.act_quantizer, first_last=q.first_last, keep_fp=q.keep_fp,
                         ternary_scale=q.ternary_scale)
        student, plan = quantized_copy(fp, qcfg)
        ti = "none"
        if q.qat == "ti":
            ti = q.ti_mode if q.ti_mode != "auto" else ("g" if find_attention(fp) else "br")
        tcfg = QATTrainConfig(steps=q.qat_steps, lr=q.qat_lr, batch_size=q.qat_batch_size, ti=ti, ti_steps=q.ti_steps,
                              blocks=q.ti_blocks, eval_every=max(1, q.qat_steps // 12), seed=ctx.cfg.distill.seed,
                              loss_set=q.qat_loss_set)
        progress.log(f"quantize/qat: {q.bits} QAT-{'TI-' + ti.upper() if ti != 'none' else 'KD'} for {q.qat_steps} steps")
        res = train_qat(fp, student, ctx.data, tcfg, **ctx.task.qat_objective(ctx.info))
        with atomic_path(out / "student_q.pt") as tmp:
            torch.save({"edgekd": {"bits": q.bits, "plan": plan}, "state_dict": student.state_dict()}, tmp)
        set_export_mode(student, True)
        info = export_onnx(student, ctx.input_shape, out / "model.onnx", ctx.cfg.export.opset, "legacy",
                           output_names=ctx.task.output_names(ctx.info), input_name=ctx.teacher.input_name)
        x = ctx.data.test.x
        with torch.no_grad():
            ref = ctx.task.predict(student, x, ctx.info)  # the task's packing (a detector's boxes and scores)
        set_export_mode(student, False)
        # Gated: the graph's reference semantics (ORT with graph optimisations off runs the Q/DQ math as written) and
        # OpenVINO. Reported: ORT's optimised int8 kernels, whose fused requantisation rounds differently (an
        # implementation artefact, not an export error; what they score is measured by the bench stage).
        checks: dict[str, Any] = {}
        for name, backend, opt in (("onnxruntime-reference", "onnxruntime", "disable"), ("openvino", "openvino", "all"),
                                   ("onnxruntime-optimized", "onnxruntime", "all")):
            try:
                got = parity.run_batched(make_runner(backend, out / "model.onnx", {"graph_optimization": opt}), x)
            except Exception as e:  # noqa: BLE001 - a runtime that is not installed is reported, not fatal here
                checks[name] = {"error": str(e)[:200]}
                continue
            checks[name] = ctx.task.parity(ref, got, ctx.info)
        report = {"bits": q.bits, "qat": q.qat, "ti": ti, "plan": plan, "export": info, "training": res,
                  "parity_vs_torch_fakequant_test": checks,
                  "low_bit_weights": "deployed as int8 Q/DQ holding the low-bit values exactly (lossless); no runtime "
                                     "kernel for sub-8-bit convolutions exists in ORT/OpenVINO"}
        write_json(out / "qat.json", report)
        for backend, st in checks.items():
            if ("agreement" in st or "top1_agreement" in st) and backend != "onnxruntime-optimized":
                parity.check(st, what=f"QAT Q/DQ model on {backend} vs torch fake-quant", atol=None,
                             min_agreement=q.qat_parity_min_agreement)
        vk = f"val_{res['val_metric']}"
        metrics = {"bits": q.bits, "ti": ti, f"final_{vk}": res[f"final_{vk}"],
                   **{f"{b}_agreement": c.get("agreement", c.get("top1_agreement")) for b, c in checks.items()}}
        return StageResult({"model": ctx.run.rel(out / "model.onnx"), "student_q": ctx.run.rel(out / "student_q.pt"),
                            "qat": ctx.run.rel(out / "qat.json")}, metrics)
