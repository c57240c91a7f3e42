"""Object detection: dense YOLO-style outputs, COCO or YOLO data, scored by mAP on every artifact (issue #17 §2).

    model output  one tensor (B, 4 + C, N) or (B, N, 4 + C): boxes (cx, cy, w, h — or x1, y1, x2, y2) in input
                  pixels, then per-class scores (probabilities or logits), for N locations — the layout of
                  Ultralytics' YOLOv8/11 exports and of edgekd's detectors (:mod:`edgekd.models.detector`); or
                  the two apart, boxes (B, N, 4) and scores (B, N, C) (or channels first), in either order — as
                  SSD/RetinaNet-style exports return them; the student then returns them apart too, under the
                  teacher's names
    data          COCO JSON or YOLO txt (:mod:`edgekd.data.detection`), letterboxed, targets (N, M, 5)
    score         mAP@[.5:.95] (primary, ``map``), mAP@.5, mAP@.75, AR@100 by pycocotools, after numpy decoding
                  and class-aware NMS (:mod:`edgekd.tasks.detection_metrics`): the torch-free worker scores too
    agreement     mAP@.5 of one implementation's detections against the other's confident ones (score ≥ 0.25):
                  1 when the INT8 artifact finds what the FP32 export finds
    distill       dense KD on the teacher's per-location scores and decoded boxes (shifts and flips the teacher
                  sees too; a weight EMA is the result), plus the FCOS ground-truth loss
                  weighted by ``distill.ce_weight`` (default 0) (:mod:`edgekd.kd.detection_losses`); the student is an edgekd
                  detector with the teacher's strides (so locations line up) and output conventions
    calibration   random images of the recipe's split

What the teacher's outputs cannot tell is decided on the data when it loads (:meth:`Detect.prepare`): whether the
scores are probabilities (all in [0, 1]) or logits, and whether boxes are centre or corner form (the one that gives
the teacher the higher val mAP@.5, logged) — a wrong guess would halve every mAP while everything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.tasks import register
from edgekd.tasks.base import Task
from edgekd.tasks.detection_metrics import (DEFAULT_DECODE, dense_layout, detections_as_truth, score_dense, split_dense,
                                             split_layout)

#: the student when the run names none (the config default, resnet-s, is a classifier): det-sp, chosen on val by
#: benchmarks/detection_students.py (val mAP 0.335 ± 0.007 over 3 seeds vs det-s 0.317 ± 0.031, det-xs 0.270 ± 0.033;
#: INT8 3.4× / 4.0× faster than the FP32 example teacher on ONNX Runtime / OpenVINO, det-s 2.2× / 3.3×)
DEFAULT_STUDENT = "det-sp"
#: distillation learning rate when none is given (AdamW; the classifier default SGD 0.1 is for logits)
DETECT_LR = 3e-3
#: weight-EMA decay when none is given (Ultralytics and timm keep an EMA for detectors; see :class:`edgekd.kd.trainer.WeightEMA`)
DETECT_EMA = 0.998
#: distill.loss_params a detector's loss takes (:class:`edgekd.kd.detection_losses.DetectionKD`'s weights)
DETECTION_LOSS_PARAMS = frozenset({"box_weight", "cls_weight"})
#: weight of the FCOS ground-truth term when distill.ce_weight is not given (see Detect.distill for how it was chosen)
DETECT_GT_WEIGHT = 1.0


@register
class Detect(Task):
    name = "detect"
    primary = "map"
    agreement_name = "mAP@.5 vs reference detections"
    trains_qat = True

    # ------------------------------------------------------------------ the model and its data
    def probe(self, outputs: Any) -> dict[str, Any]:
        from edgekd.errors import ModelLoadError

        hint = ("return one (batch, 4 + classes, anchors) tensor of boxes and class scores before NMS, as a YOLOv8 "
                "export does, or two: boxes (batch, anchors, 4) and scores (batch, anchors, classes)")
        names = getattr(outputs, "names", None)  # an ONNX teacher's output names (NamedOutputs)
        if isinstance(outputs, dict):
            names, outputs = [str(k) for k in outputs], list(outputs.values())
        if isinstance(outputs, (tuple, list)):
            if len(outputs) == 2:
                split = split_layout([tuple(getattr(o, "shape", ())) for o in outputs], names or ["boxes", "scores"])
                if split is None:
                    raise ModelLoadError("the detector's two outputs have shapes "
                                         f"{[tuple(getattr(o, 'shape', ())) for o in outputs]}, not boxes and scores of "
                                         "the same locations", hint)
                if names is None:  # a tuple: the outputs named by what they hold
                    for part in split["parts"]:
                        part["name"] = part["kind"]
                return {"layout": split, "num_classes": split["num_classes"], "decode": dict(DEFAULT_DECODE)}
            if len(outputs) != 1:
                raise ModelLoadError(f"the detector returns {len(outputs)} outputs; edgekd's detect task reads one "
                                     "dense tensor or boxes and scores", hint)
            outputs = outputs[0]
        shape = tuple(getattr(outputs, "shape", ()))
        if len(shape) != 3 or min(shape[1:]) < 5:
            raise ModelLoadError(f"the detector's output has shape {shape}, not (batch, 4 + classes, anchors)", hint)
        layout = dense_layout(shape)
        return {"layout": layout, "num_classes": layout["num_classes"], "decode": dict(DEFAULT_DECODE)}

    def output_names(self, info: dict[str, Any]) -> list[str]:
        parts = info.get("layout", {}).get("parts")
        return [p["name"] for p in parts] if parts else ["detections"]

    def named_outputs(self, outputs: np.ndarray, targets: np.ndarray,
                      info: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        parts = (info or {}).get("layout", {}).get("parts")
        if not parts:
            return super().named_outputs(outputs, targets, info)
        boxes, scores = split_dense(outputs, info["layout"])  # type: ignore[index]
        cf = info["layout"]["channels_first"]  # type: ignore[index]
        arrays = {"boxes": boxes, "scores": scores}
        return {p["name"]: (arrays[p["kind"]].transpose(0, 2, 1) if cf else arrays[p["kind"]]) for p in parts}, targets

    def load_data(self, spec: str, *, input_shape: tuple[int, ...], info: dict[str, Any], mean: Any, std: Any,
                  val_fraction: float, seed: int, limit: int | None, resize: str = "stretch",
                  test_limit: int | None = None) -> Any:
        from edgekd.data.detection import load_detection
        from edgekd.errors import DataError

        if len(input_shape) != 4:
            raise DataError(f"a detector takes images (batch, C, H, W); this model's input is {input_shape}",
                            "pass --input-shape 1,C,H,W")
        ds = load_detection(spec, channels=input_shape[1], size=(input_shape[2], input_shape[3]), mean=mean, std=std,
                            val_fraction=val_fraction, seed=seed, limit=limit)
        c = int(info["num_classes"])
        if ds.num_classes > c:
            raise DataError(f"the data have {ds.num_classes} classes, the detector scores {c}",
                            "pass the detector's dataset (class ids 0..C−1 in the detector's order)")
        return ds

    def prepare(self, teacher: Any, data: Any, info: dict[str, Any]) -> None:
        """Decide scores (probabilities or logits) and box form from the teacher's val outputs; record its strides."""
        from edgekd import progress
        from edgekd.models.detector import infer_strides

        out = self.predict(teacher, data.val.x, info)
        _, scores = split_dense(out, info["layout"])
        dec = info["decode"]
        dec["scores"] = "probabilities" if scores.min() >= 0 and scores.max() <= 1 else "logits"
        trial = {}
        for form in ("cxcywh", "xyxy"):
            trial[form] = score_dense(out, data.val.y, {**info, "decode": {**dec, "box_format": form}})["map50"]
        dec["box_format"] = max(trial, key=lambda f: (trial[f], f == "cxcywh"))
        h, w = data.input_shape[1:]
        info["strides"] = infer_strides(int(info["layout"]["anchors"]), int(h), int(w))
        info["image_hw"] = [int(h), int(w)]
        data.meta["decode"] = dict(dec)
        progress.log(f"task detect: {info['layout']['anchors']} locations"
                     + (f" (strides {info['strides']})" if info["strides"] else "")
                     + f", {info['num_classes']} classes, scores are {dec['scores']}, boxes {dec['box_format']} "
                     f"(teacher val mAP@.5 {trial['cxcywh']:.3f} as cx,cy,w,h vs {trial['xyxy']:.3f} as corners)")

    # ------------------------------------------------------------------ training (torch)
    def predict(self, model: Any, x: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray:
        """The dense output as is; a two-output detector's boxes and scores flattened and packed side by side in
        its own order, as the runtimes return them (:func:`edgekd.runtimes.packed`)."""
        from edgekd.kd.trainer import predict_logits, predict_outputs

        if info and info.get("layout", {}).get("parts"):
            return predict_outputs(model, x)
        return predict_logits(model, x)

    def build_student(self, spec: str, input_shape: tuple[int, ...], info: dict[str, Any], width: int | None,
                      depth: int | None, stem_stride: int | None = None) -> tuple[Any, dict[str, Any]]:
        from edgekd import progress
        from edgekd.errors import ConfigError
        from edgekd.models.detector import DETECTORS
        from edgekd.models.student import build_student
        from edgekd.models.zoo import MODELS

        name = spec.removeprefix("zoo:")
        if name in MODELS and name not in DETECTORS:
            progress.log(f"distill: {name} is a classifier; the detect task's student is {DEFAULT_STUDENT} "
                         f"(choose with --student {', '.join(DETECTORS.names())})")
            spec = DEFAULT_STUDENT
        if spec.removeprefix("zoo:") in DETECTORS:
            if not info.get("strides"):
                raise ConfigError(f"the teacher's {info['layout']['anchors']} locations match no stride set of an "
                                  f"edgekd detector at {info.get('image_hw')}", "pass your own student with --student "
                                  "module:factory returning the teacher's output layout")
            dec = info["decode"]
            kwargs = {"strides": list(info["strides"]), "channels_first": bool(info["layout"]["channels_first"]),
                      "box_format": dec["box_format"], "scores": dec["scores"]}
            if info["layout"].get("parts"):  # the teacher's two outputs, in its order
                kwargs["parts"] = [p["kind"] for p in info["layout"]["parts"]]
            return build_student(spec, input_shape[1], int(info["num_classes"]), width, depth, kwargs=kwargs)
        return build_student(spec, input_shape[1], int(info["num_classes"]), width, depth)

    def distill_objective(self, cfg: Any, info: dict[str, Any]) -> tuple[Any, Any]:
        """The distillation settings and loss of a detector: (the config with the detect task's defaults filled in,
        the :class:`~edgekd.kd.detection_losses.DetectionKD` loss)."""
        from edgekd import progress
        from edgekd.errors import ConfigError
        from edgekd.kd.detection_losses import DetectionKD, FCOSLoss

        if cfg.mixup > 0:
            raise ConfigError("distill.mixup is not supported for detectors (a mixed image has no boxes to keep)",
                              "remove distill.mixup")
        # distill.features (FitNets on module paths, e.g. the FPN outputs `lateral.0:lateral.0`) goes through the
        # trainer as for any task: the teacher is loaded with its module hierarchy, an adapter maps the channels
        update: dict[str, Any] = {"ce_weight": 0.0}
        if "lr" not in cfg.model_fields_set:
            update["lr"] = DETECT_LR
        if "optimizer" not in cfg.model_fields_set:
            update["optimizer"] = "adamw"
        # the loss terms were chosen on the val split by benchmarks/detection_kd_terms.py (det-s from the example
        # teacher, the demo's settings; results/detection_kd_terms.md): ground truth + class-score KD trains the best
        # student on the mean of two seeds (ground truth alone wins one of them), ahead of adding the box KD (worse on
        # both) and of KD alone. The teacher's decoded boxes are
        # worse box targets than the labels (IoU with the true box well under 1 where labelled, near 0 where the
        # teacher is unsure), so with labels the boxes are learned from the labels and the class scores from the
        # teacher. Without labels (distill.ce_weight: 0) the box term is the only box signal: λ_box 2, as GFL weights
        # its GIoU term.
        gt_weight = DETECT_GT_WEIGHT if cfg.ce_weight is None else float(cfg.ce_weight)
        params = dict(cfg.loss_params)
        unknown = sorted(set(params) - DETECTION_LOSS_PARAMS)
        if unknown:
            raise ConfigError(f"distill.loss_params {unknown} mean nothing to the detection loss",
                              "use distill.loss_params.cls_weight (class-score KD) or box_weight (GIoU to the "
                              "teacher's boxes), or none")
        # chosen on the val split (det-s from the first, black-canvas example teacher, KD only, seed 0, mAP@[.5:.95]): 12 epochs plain
        # 0.144, with a weight EMA (0.999) 0.114, EMA + shifts/flips 0.121; 30 epochs with shifts/flips 0.223 (the
        # raw weights' val mAP swings between 0.010 and 0.230 from epoch to epoch), plus EMA 0.998: 0.264, smooth
        if "ema" not in cfg.model_fields_set:
            update["ema"] = DETECT_EMA
        if info.get("layout", {}).get("parts"):
            if cfg.teacher_cache == "on":  # the cache holds one output per sample
                raise ConfigError("distill.teacher_cache 'on' keeps one output of the teacher; this detector returns "
                                  "boxes and scores apart", "set distill.teacher_cache: auto")
            update["teacher_cache"] = "off"
        if "augment" not in cfg.model_fields_set:
            update["augment"] = True
        cfg = cfg.model_copy(update=update)
        gt = None
        if gt_weight and info.get("strides"):
            gt = FCOSLoss(info["strides"], tuple(info["image_hw"]), info["layout"], info["decode"])
        elif gt_weight:
            progress.log("distill: no FCOS stride set fits the teacher's locations; distilling without the "
                         "ground-truth term")
        box_weight = float(params.get("box_weight", 0.0 if gt is not None else 2.0))
        return cfg, DetectionKD(info["layout"], info["decode"], box_weight=box_weight,
                                cls_weight=float(params.get("cls_weight", 1.0)), gt=gt,
                                gt_weight=gt_weight if gt is not None else 0.0)

    def distill(self, teacher: Any, student: Any, data: Any, cfg: Any, ckpt_dir: Path | None, info: dict[str, Any]) -> Any:
        from edgekd.kd.augment import augment_detection_batch
        from edgekd.kd.trainer import train_student

        cfg, loss = self.distill_objective(cfg, info)

        def val(model: Any, x: np.ndarray, y: np.ndarray) -> float:
            return self.score(self.predict(model, x, info), y, info)[self.primary]

        # boxes move with the pixels (the ground-truth term needs them; the teacher sees the augmented image online)
        res = train_student(teacher, student, data, cfg, ckpt_dir, loss_fn=loss, val_metric=(self.primary, val),
                            augment=augment_detection_batch)
        return res

    def qat_objective(self, info: dict[str, Any]) -> dict[str, Any]:
        """QAT-KD of a detector: the dense detection KD (:class:`DetectionKD`) from the FP student to its
        fake-quantized copy, selected on val mAP."""
        from edgekd.kd.detection_losses import DetectionKD

        def val(model: Any, x: np.ndarray, y: np.ndarray) -> float:
            return self.score(self.predict(model, x, info), y, info)[self.primary]

        return {"task_loss": DetectionKD(info["layout"], info["decode"]), "val_metric": (self.primary, val)}

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, float]:
        return self.score(self.predict(model, x, info), y, info)

    # ------------------------------------------------------------------ scoring (numpy only)
    def score(self, outputs: np.ndarray, targets: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, Any]:
        assert info, "the detect task scores with its layout (task_info)"
        if not len(targets):
            return {"samples": 0, self.primary: float("nan")}
        return {"samples": int(len(targets)), **score_dense(outputs, targets, info)}

    def agreement(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None) -> float:
        assert info
        if not len(reference):
            return 1.0
        truth = detections_as_truth(reference, info)
        if not (truth[..., 0] >= 0).any():  # the reference finds nothing: agree when the other does not either
            return float(not (detections_as_truth(outputs, info)[..., 0] >= 0).any())
        return float(score_dense(outputs, truth, info)["map50"])

    def parity(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None,
               targets: np.ndarray | None = None) -> dict[str, Any]:
        from edgekd.exporters.parity import compare

        stats = {**compare(reference, outputs), "agreement": self.agreement(reference, outputs, info),
                 "agreement_metric": self.agreement_name}
        stats.pop("top1_agreement", None)
        if targets is not None and (np.asarray(targets)[..., 0] >= 0).any():
            # the INT8 gate is on the task's own metric: mAP@.5 agreement with the FP32 export's confident
            # detections also counts the student's own borderline detections reshuffled (seed-0 demo student:
            # OpenVINO INT8 0.806 agreement at +0.2 mAP points), so it is reported, not gated on
            ref_map = float(self.score(reference, targets, info)["map"])
            got_map = float(self.score(outputs, targets, info)["map"])
            drop = 100 * (ref_map - got_map)
            stats.update(map50_agreement=stats["agreement"], map_fp32=ref_map, map_int8=got_map, map_drop_points=drop,
                         agreement=1 - max(0.0, drop) / 100,
                         agreement_metric="1 − val mAP@[.5:.95] drop (fraction; INT8 vs FP32)")
        return stats

    def int8_gate(self, quantize_cfg: Any) -> float:
        """1 − ``quantize.max_map_drop`` / 100, against :meth:`parity`'s ``agreement`` given targets."""
        return 1 - float(quantize_cfg.max_map_drop) / 100

    def calibration(self, data: Any, recipe: Any, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        from edgekd.quant.calibration import select_unstratified

        return select_unstratified(data, recipe, count)

    def describe_calibration(self, targets: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        n = int((np.asarray(targets)[..., 0] >= 0).sum()) if np.asarray(targets).ndim == 3 else 0
        return {"selection_note": f"random images ({n} objects)"}
