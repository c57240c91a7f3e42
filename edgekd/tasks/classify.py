"""Classification: one ``(batch, classes)`` logits output, integer labels; top-1 is the primary metric.

    score       top-1 = mean(argmax z == y)
    agreement   mean(argmax z_student == argmax z_teacher)
    distill     the KD losses of edgekd.kd.losses on the logits (edgekd.kd.trainer)
    calibration class-balanced (stratified) samples of the recipe's split
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.tasks import register
from edgekd.tasks.base import Task


@register
class Classification(Task):
    name = "classify"
    primary = "top1"
    trains_qat = True
    agreement_name = "top-1 agreement"

    def probe(self, outputs: Any) -> dict[str, Any]:
        from edgekd.errors import ModelLoadError

        if isinstance(outputs, (tuple, list, dict)) and len(outputs) != 1:
            raise ModelLoadError(f"the model returns {len(outputs)} outputs; a classifier returns one (batch, classes) "
                                 "logits tensor", "pass --task outputs (every output distilled and scored)")
        out = next(iter(outputs.values())) if isinstance(outputs, dict) else outputs
        out = out[0] if isinstance(out, (tuple, list)) else out
        shape = tuple(getattr(out, "shape", ()))
        if len(shape) != 2 or shape[1] < 2:
            raise ModelLoadError(f"the model's output has shape {shape}, not (batch, classes) logits",
                                 "pass --task outputs for embeddings, regression and other real-valued outputs")
        return {"num_classes": int(shape[1])}

    def output_names(self, info: dict[str, Any]) -> list[str]:
        return ["logits"]

    def load_data(self, spec: str, *, input_shape: tuple[int, ...], info: dict[str, Any], mean: Any, std: Any,
                  val_fraction: float, seed: int, limit: int | None, resize: str = "stretch",
                  test_limit: int | None = None) -> Any:
        from edgekd.data import load_dataset
        from edgekd.errors import DataError

        ds = load_dataset(spec, channels=input_shape[1], size=tuple(input_shape[2:4]) if len(input_shape) == 4 else None,
                          val_fraction=val_fraction, seed=seed, mean=mean, std=std, limit=limit, resize=resize,
                          test_limit=test_limit, sample_shape=tuple(input_shape[1:]))
        if tuple(ds.input_shape) != tuple(input_shape[1:]):
            raise DataError(f"data samples have shape {ds.input_shape}, the model wants {tuple(input_shape[1:])}",
                            "pass data of the model's input size or the right --input-shape")
        if ds.num_classes > info["num_classes"]:
            raise DataError(f"data has {ds.num_classes} classes, the teacher predicts {info['num_classes']}",
                            "pass the teacher's dataset")
        return ds

    def synth_classes(self, info: dict[str, Any]) -> int:
        return int(info["num_classes"])

    def build_student(self, spec: str, input_shape: tuple[int, ...], info: dict[str, Any], width: int | None,
                      depth: int | None, stem_stride: int | None = None) -> tuple[Any, dict[str, Any]]:
        from edgekd.models.student import build_student, in_channels

        return build_student(spec, in_channels(input_shape), info["num_classes"], width, depth, stem_stride=stem_stride)

    def predict(self, model: Any, x: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray:
        from edgekd.kd.trainer import predict_logits

        return predict_logits(model, x)

    def distill(self, teacher: Any, student: Any, data: Any, cfg: Any, ckpt_dir: Path | None,
                info: dict[str, Any]) -> Any:
        from edgekd.errors import ConfigError
        from edgekd.kd.trainer import train_student

        if cfg.output_loss:
            raise ConfigError("distill.output_loss is for the outputs task; a classifier distils its logits with "
                              "distill.loss", "remove distill.output_loss, or pass --task outputs")
        return train_student(teacher, student, data, cfg, ckpt_dir)

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, float]:
        return self.score(self.predict(model, x), y)

    def score(self, outputs: np.ndarray, targets: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, Any]:
        if not len(targets):
            return {"samples": 0, "top1": float("nan")}
        return {"samples": int(len(targets)), "top1": float((outputs.argmax(1) == targets).mean())}

    def agreement(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None) -> float:
        return float((reference.argmax(1) == outputs.argmax(1)).mean()) if len(reference) else 1.0

    def parity(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None,
               targets: np.ndarray | None = None) -> dict[str, Any]:
        from edgekd.exporters.parity import compare

        stats = compare(reference, outputs)
        return {**stats, "agreement": stats["top1_agreement"], "agreement_metric": "top-1 agreement"}

    def calibration(self, data: Any, recipe: Any, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        from edgekd.quant.calibration import select

        return select(data, recipe, count)

    def describe_calibration(self, targets: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        return {"per_class": np.bincount(targets, minlength=info["num_classes"]).tolist()}
