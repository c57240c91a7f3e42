"""Any-output models — embeddings, regression, multi-label, audio, several heads (issue #17 §1).

The model returns a tensor, a tuple/list or a dict of tensors. Nothing is assumed about what they mean: every
artifact is scored by its **fidelity to the teacher's PyTorch outputs** (R², cosine, relative L2, Pearson r, max |Δ|
per output; :mod:`edgekd.tasks.output_metrics`) and, when the data carry targets of an output's shape, by that
output's own metrics (MAE/RMSE; F1 and mAP for {0, 1} targets on probabilities).

    primary      fidelity_r2 = min over outputs of R²(outputs_k, teacher_k)   (1 = the teacher's outputs exactly)
    agreement    the same R², student (or INT8 artifact) against the teacher (or the FP32 export)
    distill      one loss per output (edgekd.kd.output_losses: mse / cosine / bce by the output's kind)
    calibration  random samples of the recipe's split (there are no classes to balance)

How the data carry the reference: when the data load, the teacher's packed outputs are computed once on every split
and stored as the first ``packed_dim`` columns of ``y``; the user's targets (if any) follow. So the torch-free worker
scores an artifact from the eval file alone (the layout travels in the file as ``task_info``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekd.tasks import register
from edgekd.tasks.base import Task
from edgekd.tasks.output_metrics import fidelity, split_packed, target_metrics


#: the distillation learning rate when none is given (see :meth:`Outputs.distill`)
OUTPUTS_LR = 0.02


@register
class Outputs(Task):
    name = "outputs"
    primary = "fidelity_r2"
    agreement_name = "R² vs reference"

    # ------------------------------------------------------------------ the model and its data
    def probe(self, outputs: Any) -> dict[str, Any]:
        from edgekd.errors import ModelLoadError

        if isinstance(outputs, dict):
            structure, items = "dict", [(str(k), v) for k, v in outputs.items()]
        elif isinstance(outputs, (tuple, list)):
            names = getattr(outputs, "names", None) or [f"output_{i}" for i in range(len(outputs))]  # an ONNX graph's
            structure, items = "tuple", list(zip(names, outputs))
        else:
            structure, items = "tensor", [("output", outputs)]
        if not items:
            raise ModelLoadError("the model returns no outputs", "return a tensor, a tuple or a dict of tensors")
        layout = []
        for name, t in items:
            shape = tuple(getattr(t, "shape", ()))
            if not hasattr(t, "dtype") or not shape or shape[0] != 2:
                raise ModelLoadError(f"output {name!r} is not a tensor with the batch first (got {type(t).__name__} "
                                     f"of shape {shape} for a batch of 2)", "return tensors of shape (batch, ...)")
            if not t.dtype.is_floating_point:
                raise ModelLoadError(f"output {name!r} is {t.dtype}, not a float tensor",
                                     "return float outputs (indices such as argmax are computed after the model)")
            layout.append({"name": name, "shape": [int(s) for s in shape[1:]]})
        return {"structure": structure, "outputs": layout, "packed_dim": int(sum(_numel(o["shape"]) for o in layout))}

    def output_names(self, info: dict[str, Any]) -> list[str]:
        return [o["name"] for o in info["outputs"]]

    def load_data(self, spec: str, *, input_shape: tuple[int, ...], info: dict[str, Any], mean: Any, std: Any,
                  val_fraction: float, seed: int, limit: int | None, resize: str = "stretch",
                  test_limit: int | None = None) -> Any:
        from edgekd.data import load_dataset
        from edgekd.errors import DataError

        ds = load_dataset(spec, channels=input_shape[1], size=tuple(input_shape[2:4]) if len(input_shape) == 4 else None,
                          val_fraction=val_fraction, seed=seed, mean=mean, std=std, limit=limit, resize=resize,
                          labels="targets", test_limit=test_limit, sample_shape=tuple(input_shape[1:]))
        if tuple(ds.input_shape) != tuple(input_shape[1:]):
            raise DataError(f"data samples have shape {ds.input_shape}, the model wants {tuple(input_shape[1:])}",
                            "pass data of the model's input size or the right --input-shape")
        return ds

    def prepare(self, teacher: Any, data: Any, info: dict[str, Any]) -> None:
        """Compute the teacher's outputs on every split (the reference every artifact is scored against), decide
        each output's kind, match the data's targets to an output, and store [reference | targets] as ``y``."""
        from edgekd import progress
        from edgekd.data import ArraySplit
        from edgekd.errors import DataError

        refs = {name: self.predict(teacher, split.x, info) for name, split in
                (("train", data.train), ("val", data.val), ("test", data.test))}
        parts = split_packed(refs["train"], info["outputs"])
        for o in info["outputs"]:
            o["kind"] = output_kind(parts[o["name"]])
        t_shape = list(data.train.y.shape[1:])
        width = int(np.prod(t_shape)) if data.train.y.ndim > 1 else 1
        info["targets"] = None
        if width:  # y of width 0: the data carry no targets
            match = [o for o in info["outputs"] if o["shape"] == t_shape or _numel(o["shape"]) == width]
            ids = data.train.y.ndim == 1 and bool(np.all(data.train.y == np.round(data.train.y)))
            if not match and ids:  # class ids (an image folder's, or an npz's) with, say, an embedding
                progress.log("data: the labels are class ids and fit none of the outputs; scored by fidelity to the "
                             "teacher only")
                width = 0
            elif not match:
                shapes = ", ".join(f"{o['name']} {tuple(o['shape'])}" for o in info["outputs"])
                raise DataError(f"the data's targets have per-sample shape {tuple(t_shape)}, which fits none of the "
                                f"model's outputs ({shapes})", "save y with an output's shape, or drop y to score "
                                "fidelity to the teacher only")
            if width:
                info["targets"] = {"output": match[0]["name"], "shape": t_shape}
            if width and len(match) > 1:
                progress.log(f"data: targets scored against output {match[0]['name']!r} (the first of "
                             f"{len(match)} outputs of their shape)")
        for name in ("train", "val", "test"):
            split = getattr(data, name)
            y = split.y.reshape(len(split.y), -1).astype(np.float32) if info["targets"] else np.zeros((len(split.y), 0), np.float32)
            setattr(data, name, ArraySplit(split.x, np.concatenate([refs[name], y], 1)))
        kinds = ", ".join(f"{o['name']} {tuple(o['shape'])} {o['kind']}" for o in info["outputs"])
        data.meta["targets"] = info["targets"]
        data.meta["reference"] = "the teacher's PyTorch outputs, computed when the data loaded"
        progress.log(f"task outputs: {kinds}; targets: "
                     + (f"{tuple(info['targets']['shape'])} scored against {info['targets']['output']}" if info["targets"]
                        else "none (fidelity to the teacher only)"))

    # ------------------------------------------------------------------ training (torch)
    def predict(self, model: Any, x: np.ndarray, info: dict[str, Any] | None = None) -> np.ndarray:
        from edgekd.kd.trainer import predict_outputs

        return predict_outputs(model, x, self.output_names(info) if info else None)

    def build_student(self, spec: str, input_shape: tuple[int, ...], info: dict[str, Any], width: int | None,
                      depth: int | None, stem_stride: int | None = None) -> tuple[Any, dict[str, Any]]:
        from edgekd.models.student import build_student, in_channels

        model, recipe = build_student(spec, in_channels(input_shape), int(info["packed_dim"]), width, depth,
                                      layout=info["outputs"], stem_stride=stem_stride)
        return model, recipe

    def distill(self, teacher: Any, student: Any, data: Any, cfg: Any, ckpt_dir: Path | None, info: dict[str, Any]) -> Any:
        import torch

        from edgekd.errors import ConfigError
        from edgekd.kd.output_losses import OutputsKD, output_loss_names
        from edgekd.kd.trainer import train_student
        from edgekd.models.heads import Packed

        if cfg.mixup > 0 or (cfg.ce_weight or 0) > 0 or cfg.features:
            raise ConfigError("distill.mixup, ce_weight and features are for classifiers; the outputs task distils "
                              "each output to the teacher's", "remove them (distill.output_loss picks the loss per output)")
        if "lr" not in cfg.model_fields_set:
            # the classifier default (SGD 0.1) diverged for the first epochs on a regression teacher (val R² −1094 after
            # epoch 1, 0.73 after 8); 0.02 reached 0.89 (tests/helpers.Regressor, 400 images, batch 32, val split)
            cfg = cfg.model_copy(update={"lr": OUTPUTS_LR})
        d = int(info["packed_dim"])
        ref = data.train.y[:, :d]
        std = torch.from_numpy(ref.std(0).astype(np.float32))
        student.center.copy_(torch.from_numpy(ref.mean(0).astype(np.float32)))
        student.scale.copy_(std.clamp_min(1e-6))
        losses = output_loss_names(info["outputs"], cfg.output_loss)
        loss = OutputsKD(info["outputs"], losses, std)
        names = self.output_names(info)

        def val(model: Any, x: np.ndarray, y: np.ndarray) -> float:
            return self.score(self.predict(model, x, info), y, info)[self.primary]

        res = train_student(Packed(teacher, names), Packed(student, names), data, cfg, ckpt_dir,
                            teacher_logits=None if cfg.augment else ref, loss_fn=loss, val_metric=(self.primary, val))
        res.student = student.eval()
        return res

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, float]:
        return self.score(self.predict(model, x, info), y, info)

    # ------------------------------------------------------------------ scoring (numpy only)
    def score(self, outputs: np.ndarray, targets: np.ndarray, info: dict[str, Any] | None = None) -> dict[str, Any]:
        assert info, "the outputs task scores with its layout (task_info)"
        d = int(info["packed_dim"])
        n = len(targets)
        if not n:
            return {"samples": 0, self.primary: float("nan")}
        res: dict[str, Any] = {"samples": int(n), **self._fidelity(targets[:, :d], outputs, info)}
        tgt = info.get("targets")
        if tgt:
            mine = split_packed(outputs, info["outputs"])[tgt["output"]]
            res["target_output"] = tgt["output"]
            res.update({f"target_{k}": v for k, v in target_metrics(mine, targets[:, d:]).items()})
        return res

    def named_outputs(self, outputs: np.ndarray, targets: np.ndarray,
                      info: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        assert info
        return split_packed(outputs, info["outputs"]), targets[:, int(info["packed_dim"]):]

    def _fidelity(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        ref = split_packed(reference, info["outputs"])
        out = split_packed(outputs, info["outputs"])
        per = {name: fidelity(ref[name], out[name]) for name in ref}
        return {self.primary: float(min(f["r2"] for f in per.values())), "fidelity": per}

    def agreement(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None) -> float:
        assert info
        return self._fidelity(reference, outputs, info)[self.primary] if len(reference) else 1.0

    def parity(self, reference: np.ndarray, outputs: np.ndarray, info: dict[str, Any] | None = None,
               targets: np.ndarray | None = None) -> dict[str, Any]:
        from edgekd.exporters.parity import compare

        assert info
        stats = {k: v for k, v in compare(reference, outputs).items() if k != "top1_agreement"}
        fid = self._fidelity(reference, outputs, info)
        return {**stats, "agreement": fid[self.primary], "agreement_metric": "R² (min over outputs)",
                "fidelity": fid["fidelity"]}

    def int8_gate(self, quantize_cfg: Any) -> float:
        return float(quantize_cfg.min_fidelity_r2)

    def calibration(self, data: Any, recipe: Any, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        from edgekd.quant.calibration import select_unstratified

        return select_unstratified(data, recipe, count)

    def describe_calibration(self, targets: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
        return {"selection_note": "random samples (no classes to balance)"}


def output_kind(values: np.ndarray) -> str:
    """``probability`` when every value lies in [0, 1] (and they vary), ``unit_norm`` when every sample's vector
    has norm 1 (d ≥ 2), else ``real``."""
    v = np.asarray(values, np.float64).reshape(len(values), -1)
    if v.size and v.min() >= 0.0 and v.max() <= 1.0 and v.std() > 0:
        return "probability"
    if v.shape[1] >= 2 and len(v) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3):
        return "unit_norm"
    return "real"


def _numel(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1
