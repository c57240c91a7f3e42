"""The public verbs. The CLI is a thin layer over these; these are a thin layer over the stages.

    import edgekd
    summary = edgekd.compress("teacher.pt2", targets=["x86-cpu", "intel-cpu"], data="fashion-mnist")
    edgekd.bench("runs/teacher")          # re-measure an existing run
    edgekd.report("runs/teacher")

Every verb takes a run directory (default ``runs/<model stem>``). Calling a later stage runs the earlier ones
first unless they are up to date, so MLOps pipelines can call ``distill``, ``export``, ``quantize``, ``lower`` and
``bench`` one by one, or all at once with ``compress``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import progress
from edgekd.config import PipelineConfig, build_config, load_config_file
from edgekd.errors import DataError, GateError, StageError, UsageError
from edgekd.fileio import sha256_file, write_json
from edgekd.benchmark.envinfo import capture as describe_environment
from edgekd.pipeline import RunDir, StageResult
from edgekd.targets import Profile, list_profiles, resolve

STAGES = ("distill", "export", "quantize", "lower", "bench")


class Pipeline:
    """One run: the config, the run directory, and lazily loaded teacher and data."""

    def __init__(self, cfg: PipelineConfig) -> None:
        # Absolute paths, so `edgekd bench RUN` works from any folder later.
        cfg = cfg.model_copy(deep=True)
        cfg.model = str(Path(cfg.model).expanduser().resolve()) if Path(cfg.model).expanduser().exists() else cfg.model
        if cfg.data.path and Path(cfg.data.path).expanduser().exists():
            cfg.data.path = str(Path(cfg.data.path).expanduser().resolve())
        if cfg.run_dir:
            cfg.run_dir = str(Path(cfg.run_dir).expanduser().resolve())
        self.cfg = cfg
        if not Path(cfg.model).expanduser().is_file():
            from edgekd.errors import ModelLoadError

            raise ModelLoadError(f"model file {cfg.model} does not exist", "check the path")
        self.profiles: list[Profile] = [resolve(t) for t in cfg.targets]
        if not self.profiles:
            raise UsageError("no target given", "pass --target, e.g. --target x86-cpu (list: edgekd targets)")
        # Every input is checked before the run directory is touched: a bad model, data path or loss leaves an
        # existing run (and its config) exactly as it was, and creates no folder.
        validate_inputs(cfg)
        self._teacher = None
        self._data = None
        self._real = None
        self._load_teacher()
        if cfg.data.path is not None:
            self._real = self._load_real_data()
        root = Path(cfg.run_dir) if cfg.run_dir else Path("runs") / Path(cfg.model).stem.split(".")[0]
        self.run = RunDir(root)
        progress.log(f"run directory: {self.run.root}")
        self.run.manifest["config"] = cfg.model_dump()
        self.run.manifest["environment"] = describe_environment()
        self.run.manifest["inputs"] = {"model": self._model_record}
        self.run.save()

    # ---------------------------------------------------------------- inputs
    def _load_teacher(self) -> None:
        from edgekd.models.loading import load_model, probe, require_input_shape

        lm = load_model(self.cfg.model, arch=self.cfg.arch, input_shape=self.cfg.input_shape, allow_pickle=self.cfg.allow_pickle)
        shape = require_input_shape(lm)
        num_classes = probe(lm.module, shape)
        self._teacher = lm
        self.input_shape = shape
        self.num_classes = num_classes
        self._model_record = {"path": lm.path, "sha256": lm.sha256, "format": lm.format, "input_shape": list(shape),
                              "num_classes": num_classes}

    @property
    def teacher(self):  # noqa: ANN201
        return self._teacher

    def _load_real_data(self):  # noqa: ANN202
        """The user's data, loaded and checked before the run directory is touched."""
        from edgekd.data import load_dataset

        d = self.cfg.data
        norm = self.known_normalize()
        mean, std = (norm["mean"], norm["std"]) if norm else (None, None)
        ds = load_dataset(d.path, channels=self.input_shape[1], size=tuple(self.input_shape[2:4]) if len(self.input_shape) == 4 else None,
                          val_fraction=d.val_fraction, seed=d.split_seed, mean=mean, std=std, limit=d.limit)
        if tuple(ds.input_shape) != tuple(self.input_shape[1:]):
            raise DataError(f"data samples have shape {ds.input_shape}, the model wants {tuple(self.input_shape[1:])}",
                            "pass data of the model's input size or the right --input-shape")
        if ds.num_classes > self.num_classes:
            raise DataError(f"data has {ds.num_classes} classes, the teacher predicts {self.num_classes}", "pass the teacher's dataset")
        if d.eval_limit:
            ds.test = ds.test.take(d.eval_limit)
            ds.meta["sizes"]["test"] = len(ds.test)
        return ds

    @property
    def data(self):  # noqa: ANN201
        if self._data is None:
            d = self.cfg.data
            if d.path is None:
                self._data = self._synthetic_dataset()
                self.run.manifest.setdefault("inputs", {})["data"] = self._data.meta
                self.run.save()
                return self._data
            ds = self._real
            if self.cfg.synth.mix:
                from edgekd.data import ArraySplit

                sx, sy, smeta = self._synthetic_arrays()
                ds.train = ArraySplit(np.concatenate([ds.train.x, sx]), np.concatenate([ds.train.y, sy]))
                ds.meta["sizes"]["train"] = len(ds.train)
                ds.meta["synthetic"] = {"method": smeta["method"], "n": len(sy), "sha256": smeta["sha256"],
                                        "mixed_into": "train"}
            self._data = ds
            self.run.manifest.setdefault("inputs", {})["data"] = ds.meta
            self.run.save()
        return self._data

    def data_key(self) -> dict[str, Any]:
        m = dict(self.data.meta)
        return {k: m.get(k) for k in ("source", "format", "sizes", "split_seed", "normalize", "val_fraction", "synthetic")}

    # ---------------------------------------------------------------- stage 0: data-free synthesis
    @property
    def data_free(self) -> bool:
        return self.cfg.data.path is None

    def known_normalize(self) -> dict[str, list[float]] | None:
        """The teacher's input normalisation when known (config, else the model file's metadata)."""
        norm = self.teacher.meta.get("normalize") or {}
        mean = self.cfg.data.mean if self.cfg.data.mean is not None else norm.get("mean")
        std = self.cfg.data.std if self.cfg.data.std is not None else norm.get("std")
        return {"mean": list(mean), "std": list(std)} if mean is not None and std is not None else None

    def synth_method(self) -> str:
        from edgekd.data.synth import choose_method

        # the synthetic set is the distillation transfer set too when a student is trained (auto picks accordingly)
        return choose_method(self.teacher.module, self.cfg.synth.method, transfer=self.cfg.distill.enabled)

    def synth(self) -> dict[str, Any]:
        s = self.cfg.synth
        method = self.synth_method()
        key = {"synth": s.model_dump(exclude={"mix", "holdout"}), "method": method, "teacher": self.teacher.sha256,
               "input_shape": list(self.input_shape), "normalize": self.known_normalize()}
        if uses_student(method):  # the game trains (ADI: competes against) the pipeline's own student
            key["student"] = self.cfg.distill.model_dump(include={"student", "width", "depth", "seed"})
        return self.run.run_stage("synth", key, lambda: self._synth(method))

    def _synth(self, method: str) -> StageResult:
        import torch

        from edgekd.data.synth import synthesize
        from edgekd.data.synth.engine import valid_range
        from edgekd.data.synth.io import write_set
        from edgekd.fileio import atomic_path

        s = self.cfg.synth
        out = self.run.fresh_dir("synth", keep=("work",))
        norm = self.known_normalize()
        mean, std = (norm["mean"], norm["std"]) if norm else (None, None)
        vr = valid_range(mean, std)
        student = recipe = None
        adversarial = is_adversarial(method)
        if uses_student(method):  # DFAD plays, and ADI competes, against the pipeline's student
            from edgekd.models.student import build_student

            torch.manual_seed(self.cfg.distill.seed)
            student, recipe = build_student(self.cfg.distill.student, self.input_shape[1], self.num_classes,
                                            self.cfg.distill.width, self.cfg.distill.depth)
        progress.log(f"synth: data-free, {s.n} images with {method} (no real data given)" if self.data_free
                     else f"synth: {s.n} images with {method}, mixed into the real training split")
        res = synthesize(self.teacher.module, s.n, self.input_shape[1:], self.num_classes, method=method, seed=s.seed,
                         valid_range=vr, work_dir=out / "work", student=student, iterations=s.iterations,
                         batch_size=s.batch_size, lr=s.lr)
        if not res.meta["finite"]:
            raise StageError("synthetic images contain NaN/inf", "lower --synth-lr or the iterations")
        write_set(out / "synth.npz", out / "preview.png", out / "synth.json", res, mean, std,
                  title=f"{method}: {s.n} images, labels = teacher top-1")
        outputs = {"data": self.run.rel(out / "synth.npz"), "preview": self.run.rel(out / "preview.png"),
                   "report": self.run.rel(out / "synth.json")}
        if student is not None and adversarial:  # ADI's student only steered synthesis: stage 1 distils a fresh one
            from edgekd.models.student import save_student

            with atomic_path(out / "dfad_student.pt") as tmp:
                save_student(str(tmp), student, recipe, {"input_shape": list(self.input_shape), "normalize": norm})
            outputs["dfad_student"] = self.run.rel(out / "dfad_student.pt")
        metrics = {k: res.meta[k] for k in ("method", "n", "seconds", "seconds_per_1000_images", "teacher_confidence_mean")}
        return StageResult(outputs, metrics)

    def _synthetic_arrays(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        self.synth()
        path = self.run.output("synth", "data")
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
        meta = json.loads((self.run.output("synth", "report")).read_text())
        meta["sha256"] = sha256_file(path)
        return x, y, meta

    def _synthetic_dataset(self):  # noqa: ANN202
        """Data-free: the synthetic set split into train / val / test (labels are the teacher's top-1)."""
        from edgekd.data import ArraySplit, Dataset

        x, y, smeta = self._synthetic_arrays()
        d, s = self.cfg.data, self.cfg.synth
        order = np.random.default_rng(d.split_seed).permutation(len(y))
        h = max(2, int(round(len(y) * s.holdout)))
        val_idx, test_idx, train_idx = order[: h // 2], order[h // 2 : h], order[h:]
        if d.limit:
            train_idx = train_idx[: d.limit]
        if d.eval_limit:
            test_idx = test_idx[: d.eval_limit]
        ds = Dataset(ArraySplit(x[train_idx], y[train_idx]), ArraySplit(x[val_idx], y[val_idx]),
                     ArraySplit(x[test_idx], y[test_idx]), num_classes=self.num_classes)
        norm = self.known_normalize()
        ds.meta = {"source": f"synthetic:{smeta['method']}", "format": "synthetic", "data_free": True,
                   "labels": "the teacher's top-1 (no real labels: top-1 = agreement with the teacher)",
                   "classes": None, "num_classes": self.num_classes, "input_shape": list(self.input_shape[1:]),
                   "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
                   "split_seed": d.split_seed, "val_fraction": s.holdout / 2,
                   "normalize": {**(norm or {"mean": None, "std": None}), "source": "synthesized in the teacher's input space"},
                   "synthetic": {"method": smeta["method"], "n": int(len(y)), "sha256": smeta["sha256"],
                                 "seconds": smeta["seconds"]}}
        return ds

    # ---------------------------------------------------------------- stage 1
    def distill(self) -> dict[str, Any]:
        cfg = self.cfg.distill
        key = {"distill": cfg.model_dump(), "teacher": self.teacher.sha256, "data": self.data_key(),
               "limit": self.cfg.data.limit}
        return self.run.run_stage("distill", key, lambda: self._distill(key))

    def _distill(self, key: dict[str, Any]) -> StageResult:
        import torch

        from edgekd.kd.trainer import accuracy, predict_logits, train_student
        from edgekd.fileio import atomic_path, sha256_json
        from edgekd.models.student import build_student, save_student
        from edgekd.models.zoo import count_params

        cfg = self.cfg.distill
        ckpt_dir = self.run.stage_dir("distill") / "ckpt"
        key_file = ckpt_dir / "key.txt"
        stage_key = sha256_json(key)
        keep = ("ckpt",) if key_file.exists() and key_file.read_text() == stage_key else ()
        out = self.run.fresh_dir("distill", keep=keep)
        ckpt_dir.mkdir(exist_ok=True)
        key_file.write_text(stage_key)
        teacher = self.teacher.module
        t_val = accuracy(predict_logits(teacher, self.data.val.x), self.data.val.y)
        if t_val < 1.5 / self.num_classes:
            progress.warn(f"the teacher scores {t_val:.3f} on the val split (near chance): "
                         "check the preprocessing (--mean/--std) matches what the teacher was trained with")
        metrics: dict[str, Any] = {"teacher_val_top1": t_val, "teacher_params": count_params(teacher)}
        if not cfg.enabled:
            student, recipe, history = None, {"arch": "teacher"}, []
        else:
            torch.manual_seed(cfg.seed)
            student, recipe = build_student(cfg.student, self.input_shape[1], self.num_classes, cfg.width, cfg.depth)
            if self.data_free and is_adversarial(self.synth_method()):
                # DFAD trains the student inside the synthesis game (stage 0); take that student as is.
                from edgekd.models.student import load_student

                student = load_student(str(self.run.output("synth", "dfad_student")), cfg.student)[0]
                val = accuracy(predict_logits(student, self.data.val.x), self.data.val.y)
                history, resumed = [{"epoch": 1, "val_top1": val, "source": "DFAD game (stage synth)"}], 0
            else:
                res = train_student(teacher, student, self.data, cfg, ckpt_dir)
                student, history, resumed = res.student, res.history, res.resumed_from_epoch
            metrics.update(student_val_top1=history[-1]["val_top1"], student_params=count_params(student),
                           resumed_from_epoch=resumed, student=recipe["arch"])
        outputs: dict[str, str] = {}
        if student is not None:
            extra = {"input_shape": list(self.input_shape), "normalize": self.data.meta["normalize"]}
            with atomic_path(out / "student.pt") as tmp:
                save_student(str(tmp), student, recipe, extra)
            outputs["student"] = self.run.rel(out / "student.pt")
        write_json(out / "history.json", history)
        outputs["history"] = self.run.rel(out / "history.json")
        return StageResult(outputs, metrics)

    def student_module(self):  # noqa: ANN201
        from edgekd.models.student import load_student

        rec = self.run.record("distill") or {}
        if "student" not in rec.get("outputs", {}):
            return self.teacher.module
        return load_student(str(self.run.output("distill", "student")), self.cfg.distill.student)[0]

    # ---------------------------------------------------------------- stage 2
    def export(self) -> dict[str, Any]:
        self.distill()
        key = {"export": self.cfg.export.model_dump(), "distill": self.run.output_hash("distill"), "teacher": self.teacher.sha256}
        return self.run.run_stage("export", key, self._export)

    def _export(self) -> StageResult:
        import torch

        from edgekd.exporters import parity
        from edgekd.exporters.onnx_export import export_onnx
        from edgekd.runtimes import make_runner

        cfg = self.cfg.export
        out = self.run.fresh_dir("export")
        x = self.data.test.x[: cfg.parity_samples]
        if len(x) < min(256, cfg.parity_samples):  # small test splits (data-free runs): top up from val, then train
            x = np.concatenate([x, self.data.val.x, self.data.train.x])[: cfg.parity_samples]
        if len(x) < min(256, cfg.parity_samples):
            progress.warn(f"export: parity checked on {len(x)} inputs only (the data has no more; 256 or more make the "
                          "check meaningful)")
        report: dict[str, Any] = {}
        outputs: dict[str, str] = {}
        distilled = "student" in (self.run.record("distill") or {}).get("outputs", {})
        for name, module in (("teacher", self.teacher.module), ("student", self.student_module())):
            path = out / f"{name}.onnx"
            program = self.teacher.program if (name == "teacher" or not distilled) else None
            info = export_onnx(module, self.input_shape, path, cfg.opset, cfg.exporter, program=program)
            with torch.no_grad():
                ref = parity.run_batched(lambda b: module(torch.from_numpy(b)).numpy(), x)
            got = parity.run_batched(make_runner("onnxruntime", path, {"graph_optimization": "all"}), x)
            stats = parity.compare(ref, got)
            report[name] = {**info, "parity_torch_vs_onnxruntime": stats}
            write_json(out / "parity.json", report)
            parity.check(stats, what=f"{name}.onnx vs PyTorch", atol=cfg.atol, min_agreement=cfg.min_top1_agreement)
            outputs[name] = self.run.rel(path)
        outputs["parity"] = self.run.rel(out / "parity.json")
        metrics = {f"{n}_{k}": v for n, r in report.items() for k, v in r["parity_torch_vs_onnxruntime"].items() if k != "samples"}
        metrics["exporter"] = report["student"]["exporter"]
        metrics["opset"] = report["student"]["opset"]
        return StageResult(outputs, metrics)

    # ---------------------------------------------------------------- stage 3
    def precision(self, p: Profile) -> str:
        prec = self.cfg.quantize.precision or p.default_precision
        if prec not in p.precisions:
            raise UsageError(f"target {p.name} does not support precision {prec}", f"choose one of {p.precisions}")
        return prec

    # ---------------------------------------------------------------- stage 3a: QAT (target-independent)
    def qat(self) -> dict[str, Any]:
        self.export()
        q = self.cfg.quantize
        key = {"qat": q.model_dump(include={"qat", "bits", "ti_mode", "ti_steps", "ti_blocks", "qat_steps", "qat_lr",
                                            "qat_batch_size", "act_quantizer", "first_last", "keep_fp", "qat_parity_min_agreement",
                                            "qat_loss_set", "ternary_scale"}),
               # the stage also reads the export opset and the seed (issue #16: both were missing, so a stale result
               # was reused after either changed)
               "opset": self.cfg.export.opset, "seed": self.cfg.distill.seed,
               "distill": self.run.output_hash("distill"), "data": self.data_key()}
        return self.run.run_stage("quantize/qat", key, self._qat)

    def _qat(self) -> StageResult:
        import torch

        from edgekd.exporters import parity
        from edgekd.exporters.onnx_export import export_onnx
        from edgekd.fileio import atomic_path
        from edgekd.quant.intervention import find_attention
        from edgekd.quant.qat import QATConfig, parse_bits, quantized_copy, set_export_mode
        from edgekd.quant.qat_train import QATTrainConfig, train_qat
        from edgekd.runtimes import make_runner

        q = self.cfg.quantize
        out = self.run.fresh_dir("quantize", "qat")
        fp = self.student_module()
        qcfg = QATConfig(**parse_bits(q.bits), act_quantizer=q.act_quantizer, first_last=q.first_last, keep_fp=q.keep_fp,
                         ternary_scale=q.ternary_scale)
        student, plan = quantized_copy(fp, qcfg)
        ti = "none"
        if q.qat == "ti":
            ti = q.ti_mode if q.ti_mode != "auto" else ("g" if find_attention(fp) else "br")
        tcfg = QATTrainConfig(steps=q.qat_steps, lr=q.qat_lr, batch_size=q.qat_batch_size, ti=ti, ti_steps=q.ti_steps,
                              blocks=q.ti_blocks, eval_every=max(1, q.qat_steps // 12), seed=self.cfg.distill.seed,
                              loss_set=q.qat_loss_set)
        progress.log(f"quantize/qat: {q.bits} QAT-{'TI-' + ti.upper() if ti != 'none' else 'KD'} for {q.qat_steps} steps")
        res = train_qat(fp, student, self.data, tcfg)
        with atomic_path(out / "student_q.pt") as tmp:
            torch.save({"edgekd": {"bits": q.bits, "plan": plan}, "state_dict": student.state_dict()}, tmp)
        set_export_mode(student, True)
        info = export_onnx(student, self.input_shape, out / "model.onnx", self.cfg.export.opset, "legacy")
        x = self.data.test.x
        with torch.no_grad():
            ref = parity.run_batched(lambda b: student(torch.from_numpy(b)).numpy(), x)
        set_export_mode(student, False)
        # Gated: the graph's reference semantics (ORT with graph optimisations off runs the Q/DQ math as written) and
        # OpenVINO. Reported: ORT's optimised int8 kernels, whose fused requantisation rounds differently (an
        # implementation artefact, not an export error; what they score is measured by the bench stage).
        checks = {}
        for name, backend, opt in (("onnxruntime-reference", "onnxruntime", "disable"), ("openvino", "openvino", "all"),
                                   ("onnxruntime-optimized", "onnxruntime", "all")):
            try:
                got = parity.run_batched(make_runner(backend, out / "model.onnx", {"graph_optimization": opt}), x)
            except Exception as e:  # noqa: BLE001 - a runtime that is not installed is reported, not fatal here
                checks[name] = {"error": str(e)[:200]}
                continue
            checks[name] = parity.compare(ref, got)
        report = {"bits": q.bits, "qat": q.qat, "ti": ti, "plan": plan, "export": info, "training": res,
                  "parity_vs_torch_fakequant_test": checks,
                  "low_bit_weights": "deployed as int8 Q/DQ holding the low-bit values exactly (lossless); no runtime "
                                     "kernel for sub-8-bit convolutions exists in ORT/OpenVINO"}
        write_json(out / "qat.json", report)
        for backend, st in checks.items():
            if "top1_agreement" in st and backend != "onnxruntime-optimized":
                parity.check(st, what=f"QAT Q/DQ model on {backend} vs torch fake-quant", atol=None,
                             min_agreement=q.qat_parity_min_agreement)
        metrics = {"bits": q.bits, "ti": ti, "final_val_top1": res["final_val_top1"],
                   **{f"{b}_top1_agreement": c.get("top1_agreement") for b, c in checks.items()}}
        return StageResult({"model": self.run.rel(out / "model.onnx"), "student_q": self.run.rel(out / "student_q.pt"),
                            "qat": self.run.rel(out / "qat.json")}, metrics)

    def quantize(self, p: Profile) -> dict[str, Any]:
        from edgekd.quant.calibration import load_recipe

        self.export()
        if self.cfg.quantize.qat != "none":
            self.qat()
            key = {"qat_model": self.run.output_hash("quantize/qat"), "backend": p.backend}
            return self.run.run_stage(f"quantize/{p.name}", key, lambda: self._copy_qat(p))
        recipe = load_recipe(self.cfg.quantize.calibration)
        backend_settings = p.onnxruntime.model_dump() if p.backend == "onnxruntime" else p.openvino.model_dump()
        key = {"quantize": self.cfg.quantize.model_dump(), "precision": self.precision(p), "backend": p.backend,
               "settings": backend_settings, "recipe": recipe.model_dump(), "export": self.run.output_hash("export"),
               "data": self.data_key()}
        return self.run.run_stage(f"quantize/{p.name}", key, lambda: self._quantize(p, recipe))

    def _copy_qat(self, p: Profile) -> StageResult:
        import shutil

        out = self.run.fresh_dir("quantize", p.name)
        shutil.copyfile(self.run.output("quantize/qat", "model"), out / "model.onnx")
        info = {"tool": "edgekd QAT (fake-quant → ONNX Q/DQ)", "precision": "int8", "source": "quantize/qat"}
        write_json(out / "calibration.json", info)
        return StageResult({"model": self.run.rel(out / "model.onnx"), "calibration": self.run.rel(out / "calibration.json")},
                           {"precision": "int8", "tool": info["tool"]})

    def _quantize(self, p: Profile, recipe) -> StageResult:  # noqa: ANN001
        import shutil

        from edgekd.exporters import parity
        from edgekd.quant.calibration import select
        from edgekd.quant.ptq import nncf_quantize_openvino, ort_quantize
        from edgekd.runtimes import make_runner

        out = self.run.fresh_dir("quantize", p.name)
        fp32 = self.run.output("export", "student")
        prec = self.precision(p)
        outputs: dict[str, str] = {}
        if prec in ("fp32", "fp16"):  # fp16: the runtime (TensorRT, an OpenVINO GPU/NPU) converts at build time
            art = out / "model.onnx"
            shutil.copyfile(fp32, art)
            info: dict[str, Any] = {"tool": "none", "precision": prec}
            outputs["model"] = self.run.rel(art)
        else:
            cx, cy = select(self.data, recipe, self.cfg.quantize.calibration_size)
            wanted = self.cfg.quantize.calibration_size or recipe.count
            if len(cx) < wanted:
                progress.warn(f"quantize/{p.name}: calibration asked for {wanted} samples ({recipe.name}) but the "
                              f"{recipe.source} split has {len(cx)}; ranges come from those {len(cx)}")
            progress.log(f"quantize/{p.name}: int8 PTQ with {len(cx)} calibration samples ({recipe.name})")
            if p.backend in ("onnxruntime", "tensorrt"):
                # TensorRT profiles carry ORT settings that make TensorRT's explicit-INT8 form (signed, symmetric)
                art = out / "model.onnx"
                info = ort_quantize(fp32, art, cx, p.onnxruntime)
                runner_settings = {"graph_optimization": "all", "threads": p.threads}
                outputs["model"] = self.run.rel(art)
            else:
                art = out / "model.xml"
                info = nncf_quantize_openvino(fp32, art, cx, p.openvino)
                runner_settings = {"threads": p.threads}
                outputs["model"] = self.run.rel(art)
                outputs["weights"] = self.run.rel(art.with_suffix(".bin"))
            info.update(precision="int8", calibration={"recipe": recipe.model_dump(), "samples": int(len(cx)),
                                                       "samples_requested": int(wanted),
                                                       "per_class": np.bincount(cy, minlength=self.num_classes).tolist()})
            # int8 vs fp32 on the val split (real data the student never trained on)
            xv = self.data.val.x
            ref = parity.run_batched(make_runner("onnxruntime", fp32, {"graph_optimization": "all"}), xv)
            if p.backend == "tensorrt":  # no engine here: ORT's reference kernels run the same Q/DQ math
                got = parity.run_batched(make_runner("onnxruntime", art, {"graph_optimization": "disable"}), xv)
                info["parity_runtime"] = "onnxruntime-reference (TensorRT's Q/DQ semantics)"
            else:
                got = parity.run_batched(make_runner(p.backend, art, runner_settings), xv)
            stats = parity.compare(ref, got)
            info["parity_int8_vs_fp32_val"] = stats
        write_json(out / "calibration.json", info)  # before the gate, so a failed stage keeps its evidence
        if "parity_int8_vs_fp32_val" in info:
            parity.check(info["parity_int8_vs_fp32_val"], what=f"int8 model for {p.name} vs fp32", atol=None,
                         min_agreement=self.cfg.quantize.min_top1_agreement)
        outputs["calibration"] = self.run.rel(out / "calibration.json")
        metrics = {"precision": prec, "tool": info["tool"]}
        if "parity_int8_vs_fp32_val" in info:
            metrics["top1_agreement_vs_fp32"] = info["parity_int8_vs_fp32_val"]["top1_agreement"]
        return StageResult(outputs, metrics)

    # ---------------------------------------------------------------- stage 4
    def lower(self, p: Profile) -> dict[str, Any]:
        self.quantize(p)
        key = {"profile": p.model_dump(exclude={"source"}), "quantize": self.run.output_hash(f"quantize/{p.name}")}
        return self.run.run_stage(f"lower/{p.name}", key, lambda: self._lower(p))

    def _lower(self, p: Profile) -> StageResult:
        from edgekd.backends import lower

        out = self.run.fresh_dir("lower", p.name)
        if p.backend == "tensorrt":
            res = self._lower_tensorrt(p, out)
        else:
            res = lower(p.backend, self.run.output(f"quantize/{p.name}", "model"), p, out)
        build = {"backend": p.backend, "profile": p.name, "precision": self.precision(p),
                 **{k: v for k, v in res.items() if k not in ("files", "artifact")}, "artifact": self.run.rel(res["artifact"])}
        write_json(out / "build.json", build)
        outputs = {k: self.run.rel(v) for k, v in res["files"].items()}
        outputs["build"] = self.run.rel(out / "build.json")
        return StageResult(outputs, {"int8_kernels": sum(res.get("int8_kernels", {}).values())})

    def _lower_tensorrt(self, p: Profile, out: Path) -> dict[str, Any]:
        """The build-on-device bundle; its manifest records the accuracy the engine should reach (ORT reference
        kernels on the test split) and the accuracy half of the INT8-vs-FP16 gate, decided here."""
        from edgekd.backends.tensorrt import lower_tensorrt
        from edgekd.exporters import parity
        from edgekd.runtimes import make_runner

        qmodel = self.run.output(f"quantize/{p.name}", "model")
        fp32 = self.run.output("export", "student")
        prec = self.precision(p)
        x, y = self.data.test.x, self.data.test.y
        ref = {"graph_optimization": "disable"}
        acc32 = float((parity.run_batched(make_runner("onnxruntime", fp32, ref), x).argmax(1) == y).mean())
        expected: dict[str, Any] = {"fp32": {"top1": acc32, "samples": int(len(y))}}
        if prec == "int8":
            acc8 = float((parity.run_batched(make_runner("onnxruntime", qmodel, ref), x).argmax(1) == y).mean())
            expected["int8"] = {"top1": acc8, "samples": int(len(y))}
            drop = 100 * (acc32 - acc8)
            budget = p.tensorrt.accuracy_budget_points
            if drop > budget:
                prec = "fp16"
                expected["gate_reason"] = f"INT8 loses {drop:.2f} pt vs FP32 (budget {budget:g} pt): shipping FP16"
            else:
                expected["gate_reason"] = f"INT8 within the accuracy budget ({drop:+.2f} pt vs FP32, budget {budget:g} pt)"
        else:
            expected["gate_reason"] = f"precision {prec} requested"
        n = min(1000, len(y))
        res = lower_tensorrt(qmodel, p, out, fp32_onnx=fp32, input_shape=list(self.input_shape), samples=(x[:n], y[:n]),
                             expected=expected, precision=prec)
        res["bundle_precision"] = prec
        res["expected_accuracy"] = expected
        if res.get("engine_note"):
            progress.log(f"lower/{p.name}: bundle written; {res['engine_note']}")
        return res

    # ---------------------------------------------------------------- stage 5
    def bench(self, p: Profile, force: bool = False) -> dict[str, Any]:
        self.lower(p)
        key = {"bench": self.cfg.bench.model_dump(), "measure": p.measure.model_dump(), "threads": p.threads,
               "lower": self.run.output_hash(f"lower/{p.name}"), "export": self.run.output_hash("export"),
               "data": self.data_key(), "eval_limit": self.cfg.data.eval_limit}
        return self.run.run_stage(f"bench/{p.name}", key, lambda: self._bench(p), force=force)

    def eval_file(self) -> Path:
        path = self.run.stage_dir("bench") / "eval.npz"
        want = f"{len(self.data.test)}:{self.data.meta['normalize']}"
        marker = path.with_suffix(".key")
        if not path.exists() or not marker.exists() or marker.read_text() != want:
            from edgekd.fileio import atomic_path

            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, x=self.data.test.x, y=self.data.test.y)
            marker.write_text(want)
        return path

    def _bench_unmeasured(self, p: Profile, out: Path, note: str, rows: list[dict[str, Any]], **extra: Any) -> StageResult:
        """A target whose device is not here: no latency; ``rows`` hold the expected accuracy and how it was got."""
        write_json(out / "latency.json", {"target": p.name, "backend": p.backend, "skipped": note, "results": [],
                                          "environment": describe_environment()})
        write_json(out / "accuracy.json", {"target": p.name, "test_samples": len(self.data.test), "results": rows, **extra})
        progress.log(f"bench/{p.name}: latency not measured ({note})")
        return StageResult({"latency": self.run.rel(out / "latency.json"), "accuracy": self.run.rel(out / "accuracy.json")},
                           {"latency_skipped": note, "expected_top1": {r["precision"]: r["top1"] for r in rows}})

    def _bench_bundle_only(self, p: Profile, out: Path) -> StageResult:
        """A TensorRT target where no engine could be built here: the expected accuracy recorded at lowering."""
        build = json.loads(self.run.output(f"lower/{p.name}", "build").read_text())
        exp = build.get("expected_accuracy", {})
        rows = [{"role": "student", "precision": k, "top1": v["top1"], "samples": v["samples"],
                 "measured_on": "onnxruntime-reference (expected TensorRT accuracy)"} for k, v in exp.items() if isinstance(v, dict)]
        return self._bench_unmeasured(p, out, build.get("engine_note") or "no engine", rows,
                                      gate=exp.get("gate_reason"), bundle_precision=build.get("bundle_precision"))

    def _bench_device_absent(self, p: Profile, out: Path, build: dict[str, Any]) -> StageResult:
        """An OpenVINO GPU/NPU profile on a machine without that device: accuracy of the IR on the CPU plugin."""
        from edgekd.exporters import parity
        from edgekd.runtimes import make_runner

        ir = self.run.output(f"lower/{p.name}", "model")
        logits = parity.run_batched(make_runner("openvino", ir, {"device": "CPU", "inference_precision": "f32"}), self.data.test.x)
        rows = [{"role": "student", "precision": self.precision(p), "top1": float((logits.argmax(1) == self.data.test.y).mean()),
                 "samples": len(self.data.test), "measured_on": "OpenVINO CPU plugin (expected accuracy on the device)"}]
        return self._bench_unmeasured(p, out, build["device_note"], rows)

    def _bench(self, p: Profile) -> StageResult:
        from edgekd.backends.onnxruntime import session_settings
        from edgekd.backends.openvino import compile_settings

        b = self.cfg.bench
        out = self.run.fresh_dir("bench", p.name)
        if p.backend == "tensorrt" and not self.run.output(f"lower/{p.name}", "model").name.endswith(".engine"):
            return self._bench_bundle_only(p, out)
        if p.backend == "openvino":
            build = json.loads(self.run.output(f"lower/{p.name}", "build").read_text())
            if build.get("compiled") is False:
                return self._bench_device_absent(p, out, build)
        eval_npz = self.eval_file()
        settings = {"onnxruntime": session_settings, "openvino": compile_settings}.get(p.backend, lambda _p: {"threads": None})(p)
        if b.threads:
            settings["threads"] = b.threads
        settings["input_shape"] = list(self.input_shape)
        settings["warmup_seconds"] = b.warmup_seconds if b.warmup_seconds is not None else p.measure.warmup_seconds
        settings["max_seconds"] = p.measure.max_seconds
        artifacts = []
        if p.backend == "tensorrt":  # engines exist for the student only; the teacher stays an ONNX file
            b = b.model_copy(update={"include_teacher": False, "include_student_fp32": False})
        if b.include_teacher:
            artifacts.append(("teacher", "fp32", self.run.output("export", "teacher")))
        if b.include_student_fp32 and self.precision(p) != "fp32":
            artifacts.append(("student", "fp32", self.run.output("export", "student")))
        artifacts.append(("student", self.precision(p), self.run.output(f"lower/{p.name}", "model")))
        results = []
        teacher_pred = None
        for role, prec, path in artifacts:
            progress.log(f"bench/{p.name}: {role} {prec} ({p.backend}, {settings.get('threads')} threads)")
            logits_path = out / f"logits-{role}-{prec}.npy"
            r = run_worker(p.backend, path, eval_npz, settings, b.warmup if b.warmup is not None else p.measure.warmup,
                           b.iterations or p.measure.iterations, p.measure.batch_sizes, logits_path)
            pred = np.load(logits_path).argmax(1)
            logits_path.unlink()
            if role == "teacher":
                teacher_pred = pred
            r.update(role=role, precision=prec, artifact=self.run.rel(path))
            if teacher_pred is not None:
                r["accuracy"]["agreement_with_teacher"] = float((pred == teacher_pred).mean())
            results.append(r)
        base = next((r for r in results if r["role"] == "teacher"), None)
        for r in results:
            if base:
                r["speedup_vs_teacher_p50"] = base["latency"]["1"]["p50_ms"] / r["latency"]["1"]["p50_ms"] if "1" in r["latency"] else None
        write_json(out / "latency.json", {"target": p.name, "backend": p.backend, "settings": settings,
                                          "environment": describe_environment(),
                                          "results": [{k: v for k, v in r.items() if k != "accuracy"} for r in results]})
        write_json(out / "accuracy.json", {"target": p.name, "test_samples": len(self.data.test),
                                           "results": [{"role": r["role"], "precision": r["precision"], **r["accuracy"]} for r in results]})
        dep = results[-1]
        metrics = {"top1": dep["accuracy"]["top1"], "p50_ms": dep["latency"].get("1", {}).get("p50_ms"),
                   "speedup_vs_teacher_p50": dep.get("speedup_vs_teacher_p50")}
        if base:
            metrics["teacher_top1"] = base["accuracy"]["top1"]
        return StageResult({"latency": self.run.rel(out / "latency.json"), "accuracy": self.run.rel(out / "accuracy.json")}, metrics)

    def all(self) -> dict[str, Any]:
        """Every stage for every target, then the report. A failed gate (parity, INT8 accuracy) stops only what
        depends on it: the other targets still run, the report is written with the failure, then GateError (exit 3)."""
        failed: list[tuple[str, GateError]] = []
        for p in self.profiles:
            try:
                self.bench(p)
            except GateError as e:
                failed.append((p.name, e))
                progress.log(f"{p.name}: {e.one_line()}")
                if self.run.record("export") and self.run.record("export").get("status") == "failed":
                    break  # the export gate failed: no target can go on
        report = write_report(self.run.root)
        if failed:
            name, err = failed[0]
            more = f" (and {len(failed) - 1} more target(s))" if len(failed) > 1 else ""
            raise GateError(f"{name}: {err.message}{more}", f"see {self.run.root / 'report.md'} (what passed is kept); "
                            f"{err.hint or 're-run after fixing'}")
        return report


def validate_inputs(cfg: PipelineConfig) -> None:
    """Checks that need no model or data loaded: the data path exists, the KD loss and its parameters build."""
    from edgekd.data.datasets import resolve_data_path

    if cfg.data.path is not None:
        resolve_data_path(cfg.data.path)  # raises DataError naming the path
    if cfg.distill.enabled:
        from edgekd.kd.losses import build_loss

        build_loss(cfg.distill.loss, **cfg.distill.loss_params)


def run_worker(backend: str, model: Path, data: Path | None, settings: dict[str, Any], warmup: int, iterations: int,
               batch_sizes: list[int], logits_out: Path | None) -> dict[str, Any]:
    """Run :mod:`edgekd.benchmark.worker` in a fresh interpreter and return its JSON."""
    cmd = [sys.executable, "-m", "edgekd.benchmark.worker", "--backend", backend, "--model", str(model), "--settings",
           json.dumps(settings), "--warmup", str(warmup), "--iterations", str(iterations),
           "--batch-sizes", ",".join(map(str, batch_sizes))]
    if data is not None:
        cmd += ["--data", str(data)]
    if logits_out is not None:
        cmd += ["--logits-out", str(logits_out)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        if os.environ.get("EDGEKD_DEBUG"):
            print(proc.stderr or proc.stdout, file=sys.stderr)
        raise StageError(f"benchmark of {model.name} on {backend} failed: {tail[0][:120]}",
                         "re-run with --debug to see the worker's full output")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_report(run_dir: str | Path) -> dict[str, Any]:
    from edgekd.benchmark.report import render

    return render(RunDir(run_dir, create=False))


# -------------------------------------------------------------------------------- public verbs


def is_adversarial(method: str) -> bool:
    """Lazy: the synthesis presets live under edgekd.data, which imports torch (the device-side runner must not)."""
    from edgekd.data.synth.presets import is_adversarial as _is_adv

    return _is_adv(method)


def uses_student(method: str) -> bool:
    """True for presets that need a student during synthesis: the adversarial games and Adaptive DeepInversion."""
    from edgekd.data.synth.presets import get_preset

    return is_adversarial(method) or bool(get_preset(method).adi_weight)


def _config(model: str | None = None, config: str | Path | PipelineConfig | None = None, **kw: Any) -> PipelineConfig:
    if isinstance(config, PipelineConfig):
        return config
    overrides = {k: v for k, v in kw.items() if v is not None}
    if model is not None:
        overrides["model"] = str(model)
    if config is not None:
        return load_config_file(config, overrides)
    if "model" not in overrides:
        raise UsageError("no model given", "pass the model file, or --config pipeline.yaml")
    return build_config(**overrides)


def _nest(kw: dict[str, Any]) -> dict[str, Any]:
    """Turn flat keyword overrides like ``distill__epochs=3`` into nested config sections."""
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if v is None:
            continue
        if "__" in k:
            section, _, key = k.partition("__")
            out.setdefault(section, {})[key] = v
        else:
            out[k] = v
    return out


def pipeline_from_run(run_dir: str | Path, **overrides: Any) -> Pipeline:
    run = RunDir(run_dir, create=False)
    raw = dict(run.manifest.get("config") or {})
    if not raw:
        raise UsageError(f"{run_dir} records no config", "re-run edgekd compress")
    given = _nest(overrides)
    # Opt-ins and code names come from the person running this command, never from a file on disk: the manifest's
    # allow_pickle is dropped, and a factory it names (not a zoo model) must be named again on the command line.
    raw["allow_pickle"] = bool(given.pop("allow_pickle", False))
    for flag, section, key in (("--arch", None, "arch"), ("--student", "distill", "student")):
        recorded = (raw.get(section) or {}).get(key) if section else raw.get(key)
        named = (given.get(section) or {}).get(key) if section else given.get(key)
        if recorded and named is None and not _is_zoo_name(str(recorded)):
            raise UsageError(f"this run was made with the factory {str(recorded)[:80]!r}; edgekd imports code only when "
                             "you name it", f"if you trust it, add {flag} {str(recorded)[:80]}")
    for k, v in given.items():
        if isinstance(v, dict):
            raw.setdefault(k, {}).update(v)
        else:
            raw[k] = v
    raw["run_dir"] = str(run_dir)
    return Pipeline(build_config(**raw))


def _is_zoo_name(name: str) -> bool:
    from edgekd.models.zoo import MODELS

    return name.removeprefix("zoo:") in MODELS


def compress(model: str | Path | None = None, *, config: str | Path | PipelineConfig | None = None, **kw: Any) -> dict[str, Any]:
    """Run every stage for every target and write the report; returns the report dict."""
    return Pipeline(_config(model, config, **_nest(kw))).all()


def _until(stage: str, model: str | Path | None, config: Any, run_dir: str | Path | None, kw: dict[str, Any]) -> dict[str, Any]:
    if model is None and config is None and run_dir is not None:
        pipe = pipeline_from_run(run_dir, **kw)
    else:
        pipe = Pipeline(_config(model, config, run_dir=str(run_dir) if run_dir else None, **_nest(kw)))
    if stage in ("distill", "export"):
        return getattr(pipe, stage)()
    return {p.name: getattr(pipe, stage)(p) for p in pipe.profiles}


def distill(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("distill", model, config, run_dir, kw)


def export(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("export", model, config, run_dir, kw)


def quantize(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("quantize", model, config, run_dir, kw)


def lower(model: str | Path | None = None, *, config: Any = None, run_dir: str | Path | None = None, **kw: Any) -> dict[str, Any]:
    return _until("lower", model, config, run_dir, kw)


def bench(run_dir: str | Path, **kw: Any) -> dict[str, Any]:
    """Re-measure an existing run (the bench stage always re-runs; earlier stages are reused)."""
    pipe = pipeline_from_run(run_dir, **kw)
    for p in pipe.profiles:
        pipe.bench(p, force=True)
    return write_report(run_dir)


def report(run_dir: str | Path) -> dict[str, Any]:
    return write_report(run_dir)


def synth(model: str | Path, *, out: str | Path = "synth.npz", n: int = 2048, method: str = "auto", iterations: int | None = None,
          batch_size: int | None = None, lr: float | None = None, seed: int = 0, arch: str | None = None,
          input_shape: str | None = None, allow_pickle: bool = False, mean: list[float] | None = None,
          std: list[float] | None = None) -> dict[str, Any]:
    """Synthesize ``n`` images from the teacher alone and write ``out`` (.npz: x, y, meta), a preview PNG and a JSON
    record. Under ``torchrun`` the batches are shared between ranks and rank 0 writes."""
    from edgekd.data.synth import synthesize
    from edgekd.data.synth.engine import valid_range
    from edgekd.data.synth.io import write_set
    from edgekd.kd.trainer import maybe_init_distributed
    from edgekd.models.loading import load_model, probe, require_input_shape

    out = Path(out)
    if out.suffix != ".npz":
        raise UsageError(f"--out {out} must end in .npz", "e.g. --out synth.npz")
    lm = load_model(str(model), arch=arch, input_shape=input_shape, allow_pickle=allow_pickle)
    shape = require_input_shape(lm)
    k = probe(lm.module, shape)
    norm = lm.meta.get("normalize") or {}
    mean = mean if mean is not None else norm.get("mean")
    std = std if std is not None else norm.get("std")
    vr = valid_range(mean, std)
    distributed = maybe_init_distributed()
    res = synthesize(lm.module, n, shape[1:], k, method=method, seed=seed, valid_range=vr,
                     work_dir=out.parent / f".{out.stem}.work", iterations=iterations, batch_size=batch_size, lr=lr)
    rank = 0
    if distributed:
        import torch.distributed as dist

        rank = dist.get_rank()
    if rank != 0:
        return {"written": False, **{k_: res.meta[k_] for k_ in ("method", "n", "seconds")}}
    meta = {**res.meta, "teacher": {"path": lm.path, "sha256": lm.sha256}, "normalize": {"mean": mean, "std": std}}
    png = out.with_suffix(".png")
    write_set(out, png, out.with_suffix(".json"), res, mean, std, title=f"{res.meta['method']}: labels = teacher top-1", meta=meta)
    import shutil

    shutil.rmtree(out.parent / f".{out.stem}.work", ignore_errors=True)  # per-batch shards, kept only for resuming
    return {"written": True, "out": str(out), "preview": str(png), **{k_: res.meta[k_] for k_ in
                                                                     ("method", "n", "seconds", "seconds_per_1000_images")}}


def targets(pattern: str = "*") -> list[Profile]:
    return list_profiles(pattern)
