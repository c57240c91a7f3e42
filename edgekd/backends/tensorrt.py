"""TensorRT lowering: a build-on-device bundle, always; the engine itself where TensorRT and an NVIDIA GPU exist.

TensorRT engines are specific to one GPU (compute capability) and one TensorRT version, so a Jetson engine cannot be
built on a laptop (NVIDIA/TensorRT#1841: "You can't"). The stage therefore writes a **bundle** that the device
builds, checks and times by itself:

    04-lower/<target>/
      model.int8.onnx     explicit-quantization Q/DQ graph (signed int8, zero-point 0, per-channel weights, axis 0)
      model.fp32.onnx     the same student without Q/DQ, for the FP16 engine of the INT8-vs-FP16 gate
      samples.npz         held-out inputs and labels: the device re-checks accuracy after building
      profile.yaml        the device profile the flags came from
      build.sh            trtexec: build FP16 and INT8 engines (shared timing cache), time both, keep INT8 only
                          if it beats FP16 by the profile's margin within the accuracy budget
      manifest.json       ONNX hashes, TensorRT version/compute capability wanted, flags, the Q/DQ lint, and the
                          accuracy the engine should reach (ONNX Runtime's unoptimised reference kernels run the
                          same Q/DQ math the engine runs)
      README.md

What is testable without TensorRT is kept in pure functions: :func:`trtexec_args`, :func:`builder_config`,
:func:`~edgekd.backends.tensorrt_lint.lint_qdq` and :func:`choose_precision`; the bundle is
written by :mod:`edgekd.backends.tensorrt_bundle`. No stand-in for the ``tensorrt`` module exists anywhere: where it is
missing, engine building and timing are reported as not done, with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgekd.backends import Backend, LowerInputs, Quantized, register
from edgekd.backends.gate import decide
from edgekd.targets import Profile



def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): TensorRT importable *and* an NVIDIA GPU visible to it."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        return False, "the tensorrt Python package is not installed (TensorRT comes with JetPack or NVIDIA's wheels)"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None:
            return False, "TensorRT found no usable NVIDIA GPU"
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot build"
        return False, f"TensorRT cannot create a builder: {str(e).splitlines()[0][:120]}"
    return True, f"TensorRT {trt.__version__}"


def gpu_compute_capability() -> str | None:
    """The compute capability of GPU 0 (``"8.7"``), from cuda-python or torch; None when neither can tell."""
    try:
        from cuda import cudart

        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            return f"{prop.major}.{prop.minor}"
    except Exception:  # noqa: BLE001 - not installed, or no GPU
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return "%d.%d" % torch.cuda.get_device_capability(0)
    except Exception:  # noqa: BLE001
        pass
    return None


def check_compute_capability(profile: Profile, have: str | None = None) -> None:
    """Refuse, in one line, to build engines for ``profile`` on a GPU of another compute capability: an engine runs
    only on the GPU family that built it, so it would be a wrong artifact with a right-looking name."""
    from edgekd.errors import TargetError

    have = have if have is not None else gpu_compute_capability()
    want = profile.device.compute_capability
    if have and want and have != want:
        raise TargetError(f"this GPU has compute capability {have}; target {profile.name} wants {want} (engines are "
                          "GPU-specific)", "use the profile of this GPU (edgekd targets), or build on the device with build.sh")


def _version_tuple(v: str | None) -> tuple[int, ...]:
    if not v:
        return (10, 0)
    return tuple(int(p) for p in v.split(".")[:2] if p.isdigit())


# ------------------------------------------------------------------------------------------ flags (pure functions)


def input_shapes(input_name: str, input_shape: list[int], batch_sizes: list[int]) -> dict[str, str]:
    """trtexec shape flags for a dynamic batch axis: min 1, opt = the latency batch (the smallest), max = the largest."""
    rest = "x".join(str(d) for d in input_shape[1:])
    lo, hi = min(batch_sizes), max(batch_sizes)
    return {"minShapes": f"{input_name}:1x{rest}", "optShapes": f"{input_name}:{lo}x{rest}",
            "maxShapes": f"{input_name}:{hi}x{rest}"}


def trtexec_args(profile: Profile, onnx: str, engine: str, precision: str, input_name: str, input_shape: list[int],
                 timing_cache: str = "timing.cache") -> list[str]:
    """The ``trtexec`` command line that builds ``engine`` from ``onnx`` for ``profile``.

    - INT8 is *explicit* quantization: the Q/DQ graph carries the scales, so no calibrator or calibration cache;
      ``--fp16`` is added so layers left unquantized run in FP16 rather than FP32.
    - DLA: ``--useDLACore=N`` (+ ``--allowGPUFallback`` for layers DLA cannot run) when the profile selects a core.
    - ``--memPoolSize=workspace:N`` (MiB; TensorRT ≥ 10 takes a unit suffix), ``--timingCacheFile`` shared by all
      builds on the device, ``--builderOptimizationLevel`` (TensorRT ≥ 8.6).
    """
    t = profile.tensorrt
    ver = _version_tuple(profile.device.tensorrt)
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if precision == "int8":
        args += ["--int8", "--fp16"]
    elif precision == "fp16":
        args += ["--fp16"]
    elif precision != "fp32":
        raise ValueError(f"TensorRT precision {precision!r}: use fp32, fp16 or int8")
    for k, v in input_shapes(input_name, input_shape, profile.measure.batch_sizes).items():
        args.append(f"--{k}={v}")
    pool = f"{t.workspace_mb}M" if ver >= (10,) else f"{t.workspace_mb}"
    args.append(f"--memPoolSize=workspace:{pool}")
    args.append(f"--timingCacheFile={timing_cache}")
    if ver >= (8, 6):
        args.append(f"--builderOptimizationLevel={t.builder_optimization_level}")
    if t.dla_core is not None:
        args.append(f"--useDLACore={t.dla_core}")
        if t.allow_gpu_fallback:
            args.append("--allowGPUFallback")
    if t.sparsity:
        args.append("--sparsity=enable")
    return args


def trtexec_timing_args(profile: Profile, engine: str, input_name: str, input_shape: list[int], batch: int,
                        times_json: str) -> list[str]:
    """``trtexec`` timing of a built engine at one batch size (GPU compute time per inference, exported as JSON)."""
    rest = "x".join(str(d) for d in input_shape[1:])
    m = profile.measure
    args = ["trtexec", f"--loadEngine={engine}", f"--shapes={input_name}:{batch}x{rest}",
            f"--warmUp={int(max(m.warmup_seconds, 0.2) * 1000)}", f"--iterations={m.iterations}",
            f"--duration={int(m.max_seconds)}", "--useSpinWait", f"--exportTimes={times_json}"]
    if profile.tensorrt.dla_core is not None:
        args.append(f"--useDLACore={profile.tensorrt.dla_core}")
    return args


def builder_config(profile: Profile, precision: str) -> dict[str, Any]:
    """The TensorRT Python-API builder settings equivalent to :func:`trtexec_args` (names of ``trt.BuilderFlag``
    members and ``trt.MemoryPoolType``), used by :func:`build_engine` and by the bundle's ``build_engine.py``."""
    t = profile.tensorrt
    flags: list[str] = []
    if precision == "int8":
        flags += ["INT8", "FP16"]
    elif precision == "fp16":
        flags += ["FP16"]
    cfg: dict[str, Any] = {"flags": flags, "memory_pool_limits": {"WORKSPACE": t.workspace_mb * (1 << 20)},
                           "builder_optimization_level": t.builder_optimization_level, "default_device_type": "GPU",
                           "dla_core": None}
    if t.dla_core is not None:
        cfg.update(default_device_type="DLA", dla_core=t.dla_core)
        if t.allow_gpu_fallback:
            flags.append("GPU_FALLBACK")
    if t.sparsity:
        flags.append("SPARSE_WEIGHTS")
    return cfg


def choose_precision(fp16: dict[str, float], int8: dict[str, float], min_speedup: float,
                     accuracy_budget_points: float) -> tuple[str, str]:
    """The INT8-vs-FP16 gate on measured engines (:func:`edgekd.backends.gate.decide`, the one rule): keep INT8 only
    if ``p50(FP16) / p50(INT8) ≥ min_speedup`` **and** ``top1(INT8) ≥ top1(FP16) − budget``."""
    return decide(fp16.get("top1"), int8.get("top1"), fp16.get("p50_ms"), int8.get("p50_ms"), accuracy_budget_points,
                  min_speedup, "fp16")


# ------------------------------------------------------------------------------------------ engine build (needs TRT)


def build_engine(onnx_path: Path, engine_path: Path, profile: Profile, precision: str, input_name: str,
                 input_shape: list[int], timing_cache: Path) -> dict[str, Any]:
    """Build one engine with the TensorRT Python API (only where :func:`tensorrt_status` says it can), reusing and
    updating ``timing_cache``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if _version_tuple(trt.__version__) >= (10,) else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errs}")
    cfg = builder.create_builder_config()
    bc = builder_config(profile, precision)
    for f in bc["flags"]:
        cfg.set_flag(getattr(trt.BuilderFlag, f))
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, bc["memory_pool_limits"]["WORKSPACE"])
    if hasattr(cfg, "builder_optimization_level"):
        cfg.builder_optimization_level = bc["builder_optimization_level"]
    if bc["dla_core"] is not None:
        cfg.default_device_type = trt.DeviceType.DLA
        cfg.DLA_core = bc["dla_core"]
    cache = cfg.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    cfg.set_timing_cache(cache, ignore_mismatch=False)
    opt = builder.create_optimization_profile()
    shapes = input_shapes(input_name, input_shape, profile.measure.batch_sizes)
    dims = [tuple(int(d) for d in shapes[k].split(":")[1].split("x")) for k in ("minShapes", "optShapes", "maxShapes")]
    opt.set_shape(input_name, *dims)
    cfg.add_optimization_profile(opt)
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build the {precision} engine")
    engine_path.write_bytes(bytes(serialized))
    timing_cache.write_bytes(bytes(cfg.get_timing_cache().serialize()))
    return {"engine": engine_path.name, "precision": precision, "tensorrt": trt.__version__, "builder": bc}


def lower_tensorrt(model: Path, profile: Profile, out_dir: Path, *, fp32_onnx: Path, input_shape: list[int],
                   samples: tuple[np.ndarray, np.ndarray] | None = None, expected: dict[str, Any] | None = None,
                   precision: str = "int8", task_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Not in the backends registry: besides the model it needs the FP32 ONNX, the input shape, held-out samples and
    the expected accuracy, which the pipeline's lower stage supplies."""
    from edgekd import __version__

    int8 = model if precision == "int8" else None  # the accuracy half of the gate already chose fp16 otherwise
    from edgekd.backends.tensorrt_bundle import write_bundle

    res = write_bundle(profile, int8, fp32_onnx, out_dir, input_shape, samples, expected or {}, __version__, task_info)
    manifest, files = res["manifest"], res["files"]
    ok, reason = tensorrt_status()
    if ok:
        check_compute_capability(profile)
    engines: dict[str, Any] = {}
    if ok:
        name = manifest["input"]["name"]
        for p, src in (("fp16", out_dir / "model.fp32.onnx"), ("int8", out_dir / "model.int8.onnx")):
            if src.exists():
                engines[p] = build_engine(src, out_dir / f"model.{p}.engine", profile, p, name, input_shape, out_dir / "timing.cache")
                files[f"engine_{p}"] = out_dir / f"model.{p}.engine"
    artifact = files.get("engine_int8") or files.get("engine_fp16") or files.get("int8_onnx") or files["fp32_onnx"]
    files["model"] = artifact  # the engine where one was built, else the ONNX the device builds from
    return {"artifact": artifact, "files": files, "tensorrt": reason, "engines_built": sorted(engines),
            "engine_note": None if ok else f"engines not built here: {reason}; run build.sh on the device",
            "qdq_lint": manifest["qdq_lint"], "int8_kernels": {}, "low_bit_kernels": {}}


def gate_value(value: float, higher_is_better: bool, points_scale: float) -> float:
    """The metric on the scale :func:`edgekd.backends.gate.decide` compares (higher is better, 100 × a difference
    = points): ``±value × points_scale / 100``. Top-1 and mAP (0…1, 100 points per unit) are their own gate value;
    an error metric (lower is better) is negated."""
    return (1.0 if higher_is_better else -1.0) * value * (points_scale / 100.0)  # exactly ``value`` for 0…1 metrics


@register
class TensorrtBackend(Backend):
    """TensorRT (Jetsons, NVIDIA GPUs): explicit-INT8 Q/DQ from ONNX Runtime's quantizer (signed, symmetric, per the
    profile's ``onnxruntime`` settings), lowered to a build-on-device bundle, and to engines where TensorRT and a GPU
    of the profile's compute capability are here. Bench times engines only: the teacher stays an ONNX file."""

    name = "tensorrt"
    #: every task: the bundle's expected accuracy is the task's primary metric, computed here (ONNX Runtime's reference
    #: kernels), and its on-device INT8-vs-FP16 gate (gate.py) compares those recorded values
    tasks = None
    suffixes = (".engine", ".plan", ".trt")

    reference_precision = "fp16"

    def settings(self, profile: Profile) -> dict[str, Any]:
        return {"threads": None}

    def can_time(self, profile: Profile) -> bool:
        # the planner's candidates are not built into engines here; the bundle's on-device gate times INT8 vs FP16
        return False

    def quantize(self, fp32_onnx: Path, out_dir: Path, calib_x: Any, profile: Profile,
                 keep_float: Sequence[str] = ()) -> Quantized:
        from edgekd.quant.ptq import ort_quantize

        art = out_dir / "model.onnx"
        # a layer kept in float has no Q/DQ around it, so TensorRT builds it in FP16 (the plan travels in the graph)
        info = ort_quantize(fp32_onnx, art, calib_x, profile.onnxruntime, keep_float=keep_float)
        info["parity_runtime"] = "onnxruntime-reference (TensorRT's Q/DQ semantics)"
        # no engine here: ORT's reference kernels (graph optimisations off) run the same Q/DQ math
        return Quantized(info, {"model": art}, "onnxruntime", {"graph_optimization": "disable"})

    def plan_layers(self, fp32_onnx: Path, profile: Profile) -> list[dict[str, str]]:
        from edgekd.quant.ptq import ort_plan_layers

        return ort_plan_layers(fp32_onnx, profile.onnxruntime)

    def float_reverter(self, int8_model: Path, fp32_onnx: Path, work: Path) -> Callable[[Sequence[str], Path], Path]:
        from edgekd.quant.keep_float import ort_reverter

        return ort_reverter(int8_model, fp32_onnx, work)

    def layer_errors(self, int8_model: Path, fp32_onnx: Path, layers: Sequence[str], x: Any, profile: Profile,
                     work: Path) -> list[dict[str, Any]] | None:
        from edgekd.quant.layer_error import ort_layer_errors

        return ort_layer_errors(int8_model, fp32_onnx, layers, x, work)

    def lower(self, model: Path, profile: Profile, out_dir: Path, inputs: LowerInputs) -> dict[str, Any]:
        """The accuracy half of the INT8 gate is decided here, on ONNX Runtime's reference kernels (FP16 accuracy
        taken as the FP32 model's; the device re-checks with ``gate.py``), then the bundle is written."""
        from edgekd.exporters.parity import run_batched
        from edgekd.runtimes import make_runner

        x, y = inputs.test
        if inputs.score is None:
            raise ValueError("TensorRT lowering needs the task's scorer (LowerInputs.score): a bundle states its "
                             "expected accuracy in the task's primary metric, never in an assumed top-1")
        ref = {"graph_optimization": "disable"}
        name = inputs.metric

        def expect(path: Path) -> dict[str, Any]:
            v = inputs.score(run_batched(make_runner("onnxruntime", path, ref), x))  # type: ignore[misc]
            return {name: v, "gate_value": gate_value(v, inputs.higher_is_better, inputs.points_scale),
                    "samples": int(len(y))}

        expected: dict[str, Any] = {"metric": name, "fp32": expect(inputs.fp32_onnx)}
        prec = inputs.precision
        if prec == "int8":
            expected["int8"] = expect(model)
            prec, expected["gate_reason"] = decide(expected["fp32"]["gate_value"], expected["int8"]["gate_value"], None,
                                                   None, profile.tensorrt.accuracy_budget_points,
                                                   profile.tensorrt.int8_min_speedup, "fp16")
            if prec != "int8":
                expected["gate_reason"] += ": shipping FP16"
        else:
            expected["gate_reason"] = f"precision {prec} requested"
        n = min(1000, len(y))
        res = lower_tensorrt(model, profile, out_dir, fp32_onnx=inputs.fp32_onnx, input_shape=inputs.input_shape,
                             samples=(x[:n], y[:n]), expected=expected, precision=prec, task_info=inputs.task_info)
        res["bundle_precision"] = prec
        res["expected_accuracy"] = expected
        return res

    def unmeasured(self, profile: Profile, build: dict[str, Any], test: tuple[Any, Any],
                   artifact: Path) -> tuple[str, list[dict[str, Any]]] | None:
        if artifact.suffix in self.suffixes:
            return None
        exp = build.get("expected_accuracy", {})
        name = exp.get("metric", "top1")
        rows = [{"role": "student", "precision": k, name: v[name], "samples": v["samples"],
                 "measured_on": "onnxruntime-reference (expected TensorRT accuracy)"}
                for k, v in exp.items() if isinstance(v, dict)]
        return build.get("engine_note") or "no engine", rows

    def bench_roles(self) -> tuple[str, ...]:
        return ()
