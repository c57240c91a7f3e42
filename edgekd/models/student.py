"""Build the student: a zoo model sized to the teacher's input and classes, or the user's own factory."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from edgekd.models.loading import resolve_factory
from edgekd.models.zoo import MODELS, build_model


def in_channels(input_shape: tuple[int, ...]) -> int:
    """The channel count a student's first layer reads: C of an (N, C, H, W) image or an (N, C, L) sequence; 1 for an
    (N, L) input, which the 1-D students read as one channel."""
    return int(input_shape[1]) if len(input_shape) >= 3 else 1


def build_student(spec: str, in_channels: int, num_classes: int, width: int | None = None,
                  depth: int | None = None, layout: list[dict[str, Any]] | None = None,
                  kwargs: dict[str, Any] | None = None, stem_stride: int | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Return (student, recipe); the recipe rebuilds it later (saved next to the weights).

    With ``layout`` (the ``outputs`` task) the model's ``num_classes`` outputs are the packed outputs, split into the
    teacher's output structure by :class:`edgekd.models.heads.OutputHeads`. A detector of
    :data:`edgekd.models.detector.DETECTORS` takes ``kwargs`` (strides, output conventions), recorded too."""
    from edgekd.models.detector import DETECTORS, build_detector

    if spec.removeprefix("zoo:") in DETECTORS:
        name = spec.removeprefix("zoo:")
        model = build_detector(name, in_channels, num_classes, width, depth, **(kwargs or {}))
        recipe = {"arch": name, "in_channels": in_channels, "num_classes": num_classes, "width": width, "depth": depth,
                  "kwargs": dict(kwargs or {})}
    elif spec.removeprefix("zoo:") in MODELS:
        name = spec.removeprefix("zoo:")
        model = build_model(name, in_channels, num_classes, width, depth, stem_stride)
        recipe = {"arch": name, "in_channels": in_channels, "num_classes": num_classes, "width": width, "depth": depth}
        if stem_stride:  # scaled to a large input (edgekd.models.sizing)
            recipe["stem_stride"] = stem_stride
    else:
        factory = resolve_factory(spec)
        n_params = len([p for p in inspect.signature(factory).parameters.values() if p.default is inspect.Parameter.empty])
        model = factory(in_channels, num_classes) if n_params >= 2 else factory()
        recipe = {"arch": spec, "in_channels": in_channels, "num_classes": num_classes, "width": None, "depth": None}
    if layout is not None:
        from edgekd.models.heads import OutputHeads

        model = OutputHeads(model, layout)
        recipe["layout"] = [{"name": o["name"], "shape": list(o["shape"]), "kind": o.get("kind", "real")} for o in layout]
    return model, recipe


def save_student(path: str, model: nn.Module, recipe: dict[str, Any], extra: dict[str, Any]) -> None:
    torch.save({"edgekd": {**recipe, **extra}, "state_dict": model.state_dict()}, path)


def load_student(path: str, named_factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved student. Its recorded architecture is built only when it is a zoo model or the factory the
    user named for this run (``named_factory``): a file on disk never chooses code to import."""
    from edgekd.errors import ModelLoadError

    obj = torch.load(path, map_location="cpu", weights_only=True)
    meta = obj["edgekd"]
    arch = str(meta["arch"])
    from edgekd.models.detector import DETECTORS

    if arch.removeprefix("zoo:") not in MODELS and arch.removeprefix("zoo:") not in DETECTORS and arch != named_factory:
        raise ModelLoadError(f"the student in {path} was built by the factory {arch[:80]!r}, which this command did not name",
                             f"if you trust it, add --student {arch[:80]}")
    model, _ = build_student(arch, meta["in_channels"], meta["num_classes"], meta.get("width"), meta.get("depth"),
                             layout=meta.get("layout"), kwargs=meta.get("kwargs"), stem_stride=meta.get("stem_stride"))
    model.load_state_dict(obj["state_dict"])
    return model.eval(), meta
