"""Backends: one module per target runtime behind one interface, looked up by the profile's ``backend`` name.

A backend (torchao's config → handler lookup; Ultralytics' capability table, not its 1,500-line class) says

- ``settings(profile)``: how its runner is configured for a profile (threads, graph optimisation, device, …);
- ``quantize(...)``: INT8 PTQ with the runtime's own tool, and how to check the result;
- ``lower(...)``: the deployable artifact (an ORT session file, an OpenVINO IR, a TensorRT bundle/engine);
- ``unmeasured(...)``: why latency cannot be measured here (a device that is absent), with the expected accuracy.

Running an artifact is :func:`edgekd.runtimes.open_session`, torch-free and shared by the pipeline, the benchmark
worker and the device-side runner. Adding a backend is one module here, registered with :func:`register`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from edgekd.registry import Registry

if TYPE_CHECKING:
    from edgekd.targets import Profile


@dataclass
class Quantized:
    """What a backend's quantizer made: the report, the files, and how to run the result for the INT8 check."""

    info: dict[str, Any]
    files: dict[str, Path]
    check_backend: str
    check_settings: dict[str, Any]


@dataclass
class LowerInputs:
    """What lowering may need beyond the quantized model (TensorRT's bundle uses all of it)."""

    fp32_onnx: Path
    input_shape: list[int]
    test: tuple[np.ndarray, np.ndarray]
    precision: str
    #: outputs on ``test``'s inputs → the task's primary metric (what a bundle's expected accuracy is stated in)
    score: Callable[[np.ndarray], float] | None = None
    #: the primary metric's name, direction and points per unit (an INT8 budget is in points)
    metric: str = "top1"
    higher_is_better: bool = True
    points_scale: float = 100.0
    #: what the task's torch-free scorer needs besides the outputs (detection: decoding); a bundle's samples carry it
    task_info: dict[str, Any] | None = None


class Backend:
    name: str = ""
    #: artifact suffixes this backend runs (``edgekd bench FILE`` picks the backend by suffix)
    suffixes: tuple[str, ...] = ()
    #: the tasks whose outputs this backend's lowering and gates can score (None: every task, through the task)
    tasks: tuple[str, ...] | None = None

    #: what ships when INT8 is not worth it (the INT8 gate's and the planner's reference)
    reference_precision: str = "fp32"
    #: whether :meth:`slower_in_int8` reads a per-layer kernel profile (else it returns None)
    profiles_layers: bool = False

    def settings(self, profile: Profile) -> dict[str, Any]:
        raise NotImplementedError

    def can_time(self, profile: Profile) -> bool:
        """Whether this machine can time the profile's artifacts (the planner's speed half)."""
        return True

    def quantize(self, fp32_onnx: Path, out_dir: Path, calib_x: np.ndarray, profile: Profile,
                 keep_float: Sequence[str] = ()) -> Quantized:
        """INT8 PTQ; ``keep_float`` names layers (as :meth:`plan_layers` lists them) left in floating point."""
        raise NotImplementedError

    def plan_layers(self, fp32_onnx: Path, profile: Profile) -> list[dict[str, str]]:
        """The layers this backend's quantizer makes INT8 and ``keep_float`` can name: ``[{"name", "op"}]`` in graph
        order (the precision planner's search space). A backend without a planner raises a one-line error."""
        raise self._no_planner()

    def float_reverter(self, int8_model: Path, fp32_onnx: Path, work: Path) -> Callable[[Sequence[str], Path], Path]:
        """A function ``(layer names, out path) → artifact`` making variants of this backend's all-INT8
        ``int8_model`` with the named layers in float, without calibrating again (:mod:`edgekd.quant.keep_float`;
        the planner's variants, and what ``quantize(keep_float=...)`` ships)."""
        raise self._no_planner()

    def layer_errors(self, int8_model: Path, fp32_onnx: Path, layers: Sequence[str], x: np.ndarray, profile: Profile,
                     work: Path) -> list[dict[str, Any]] | None:
        """The quantization error each layer of ``int8_model`` adds (:mod:`edgekd.quant.layer_error`, one pass of
        each model): the planner's ranking proxy. None: this backend cannot tell (the planner then ranks each layer
        by its own variant)."""
        return None

    def slower_in_int8(self, int8_model: Path, fp32_onnx: Path, layers: Sequence[str], x: np.ndarray,
                       profile: Profile, margin: float = 1.25) -> list[dict[str, Any]] | None:
        """Layers whose INT8 kernel is slower than their float one on this runtime, from its own profiler
        (:mod:`edgekd.quant.layer_speed`): the planner's speed candidates. None: this backend cannot tell."""
        return None

    def _no_planner(self) -> Exception:
        from edgekd.errors import UsageError

        return UsageError(f"the precision planner does not support the {self.name} backend yet",
                          "plan on an onnxruntime, openvino or tensorrt target, or drop quantize.plan / --max-drop")

    def lower(self, model: Path, profile: Profile, out_dir: Path, inputs: LowerInputs) -> dict[str, Any]:
        raise NotImplementedError

    def unmeasured(self, profile: Profile, build: dict[str, Any], test: tuple[np.ndarray, np.ndarray],
                   artifact: Path) -> tuple[str, list[dict[str, Any]]] | None:
        """None when the artifact can be timed here; else (why not, rows of expected accuracy)."""
        return None

    def bench_roles(self) -> tuple[str, ...]:
        """Which artifacts the bench stage times besides the deployed student: teacher / student FP32 exports."""
        return ("teacher", "student_fp32")


BACKEND_NAMES = ("onnxruntime", "openvino", "tensorrt")
BACKENDS: Registry[Backend] = Registry("backend", lazy={n: f"edgekd.backends.{n}" for n in BACKEND_NAMES})


def register(cls: type[Backend]) -> type[Backend]:
    BACKENDS.add(cls.name, cls())
    return cls


def get_backend(name: str) -> Backend:
    """The backend called ``name``, its module imported on first use (a device imports only what it runs)."""
    return BACKENDS.get(name)


def lower(backend: str, model: Path, profile: Profile, out_dir: Path, inputs: LowerInputs | None = None) -> dict[str, Any]:
    return get_backend(backend).lower(model, profile, out_dir, inputs)  # type: ignore[arg-type]
