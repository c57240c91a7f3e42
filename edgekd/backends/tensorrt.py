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
:func:`lint_qdq` and :func:`choose_precision`. No stand-in for the ``tensorrt`` module exists anywhere: where it is
missing, engine building and timing are reported as not done, with the reason.
"""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgekd.backends import Backend, LowerInputs, Quantized, register
from edgekd.backends.gate import decide
from edgekd.fileio import sha256_file, write_json, write_text
from edgekd.targets import Profile

#: ops that exist only in ONNX Runtime's contrib domain; TensorRT's parser rejects them
ORT_ONLY_DOMAINS = ("com.microsoft",)


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


# ------------------------------------------------------------------------------------------ the TensorRT-ready lint


@dataclass
class LintReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "warnings": self.warnings, "stats": self.stats}


def lint_qdq(model_path: str | Path, max_opset: int) -> LintReport:
    """Check that a Q/DQ ONNX graph builds as *explicit* INT8 in TensorRT (TensorRT developer guide, "Explicit
    Quantization"): signed int8 Q/DQ with zero-point 0 (TensorRT supports symmetric quantization only), per-tensor
    scales on activations, per-channel weight scales on the output-channel axis (0 for Conv, the N axis for
    MatMul/Gemm), positive finite scales, an opset between 13 (per-channel Q/DQ) and what the profile's TensorRT
    parses, and no ONNX Runtime-only ops (e.g. MatMulNBits)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    m = onnx.load(str(model_path))
    rep = LintReport()
    g = m.graph
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    rep.stats["opset"] = opset
    if opset is None or opset < 13:
        rep.errors.append(f"opset {opset} < 13: per-channel QuantizeLinear/DequantizeLinear needs opset ≥ 13")
    elif opset > max_opset:
        rep.errors.append(f"opset {opset} is newer than this TensorRT parses (≤ {max_opset}): export with --opset {max_opset}")
    inits = {t.name: t for t in g.initializer}
    consts = dict(inits)
    for n in g.node:
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = n.attribute[0].t
    producers = {o: n for n in g.node for o in n.output}
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in g.node if n.domain in ORT_ONLY_DOMAINS})
    if foreign:
        rep.errors.append(f"ONNX Runtime-only ops TensorRT cannot parse: {', '.join(foreign)} (use the int8 Q/DQ form)")
    n_q = n_dq = 0
    for n in g.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_q += n.op_type == "QuantizeLinear"
        n_dq += n.op_type == "DequantizeLinear"
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None:
            rep.errors.append(f"{n.name or n.op_type}: scale is not a constant (TensorRT needs build-time scales)")
            continue
        s = numpy_helper.to_array(scale)
        if not (np.isfinite(s).all() and (s > 0).all()):
            rep.errors.append(f"{n.name}: scales must be positive and finite")
        if len(n.input) < 3 or not n.input[2]:
            if n.op_type == "QuantizeLinear":
                rep.errors.append(f"{n.name}: no zero-point, so the output is uint8 by the ONNX default; TensorRT needs int8")
        else:
            zp = consts.get(n.input[2])
            if zp is None:
                rep.errors.append(f"{n.name}: zero-point is not a constant")
            else:
                if zp.data_type != TensorProto.INT8:
                    rep.errors.append(f"{n.name}: {TensorProto.DataType.Name(zp.data_type).lower()} zero-point; TensorRT "
                                      "supports signed int8 only (quantize with activation_type=int8)")
                if np.any(numpy_helper.to_array(zp) != 0):
                    rep.errors.append(f"{n.name}: non-zero zero-point (asymmetric); TensorRT supports symmetric only")
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        per_channel = s.size > 1
        is_weight = n.op_type == "DequantizeLinear" and (n.input[0] in inits or
                                                          (n.input[0] in producers and producers[n.input[0]].op_type == "QuantizeLinear"
                                                           and producers[n.input[0]].input[0] in inits))
        if per_channel and not is_weight:
            rep.errors.append(f"{n.name}: per-channel scales on an activation; TensorRT needs per-tensor activation scales")
        if is_weight:
            src = n.input[0]
            if src in producers and producers[src].op_type == "QuantizeLinear":
                src = producers[src].input[0]
            w = inits.get(src)
            consumers = [c for c in g.node if n.output[0] in c.input]
            for c in consumers:
                if c.op_type in ("Conv", "ConvTranspose") and c.input[1] == n.output[0]:
                    want = 1 if c.op_type == "ConvTranspose" else 0
                    if per_channel and axis != want:
                        rep.errors.append(f"{n.name}: per-channel weight scales on axis {axis}; {c.op_type} needs axis {want}")
                elif c.op_type in ("MatMul", "Gemm") and len(c.input) > 1 and c.input[1] == n.output[0] and w is not None:
                    trans_b = next((a.i for a in c.attribute if a.name == "transB"), 0) if c.op_type == "Gemm" else 0
                    want = 0 if trans_b else len(w.dims) - 1
                    if per_channel and axis % max(1, len(w.dims)) != want:
                        rep.errors.append(f"{n.name}: per-channel weight scales on axis {axis}; {c.op_type} needs the output axis {want}")
            if not per_channel:
                rep.warnings.append(f"{n.name}: per-tensor weight scale (per-channel keeps more accuracy)")
    convs = [n for n in g.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    quantized = [n for n in convs if len(n.input) > 1 and n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"]
    rep.stats.update(quantize_linear=n_q, dequantize_linear=n_dq, compute_ops=len(convs), quantized_compute_ops=len(quantized))
    if n_dq == 0:
        rep.warnings.append("no Q/DQ nodes: the engine will be FP16/FP32, not INT8")
    elif len(quantized) < len(convs):
        rep.warnings.append(f"{len(convs) - len(quantized)} of {len(convs)} Conv/MatMul/Gemm ops have float weights and run in FP16")
    return rep


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


# ------------------------------------------------------------------------------------------ the bundle


BUILD_SH = """#!/usr/bin/env bash
# Build, time and gate TensorRT engines for {profile} on the device (made by edgekd {version}).
# Needs: trtexec (JetPack: /usr/src/tensorrt/bin/trtexec) and python3. Re-running reuses timing.cache.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
want_trt="{trt_version}"; want_cc="{compute_capability}"
have_trt="$("$TRTEXEC" --help 2>&1 | sed -n 's/.*TensorRT version: *\\([0-9.]*\\).*/\\1/p; s/.*TensorRT v\\([0-9]\\+\\).*/\\1/p' | head -1)"
have_cc="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 || true)"
echo "TensorRT wanted ${{want_trt}}, found ${{have_trt:-unknown}}; compute capability wanted ${{want_cc}}, found ${{have_cc:-unknown}}"
if [ -n "$have_cc" ] && [ "$want_cc" != "any" ] && [ "$have_cc" != "$want_cc" ]; then
  echo "error: this GPU has compute capability $have_cc, the bundle is for $want_cc (profile {profile}); engines are GPU-specific (hint: make the bundle with the profile of this GPU: edgekd targets)" >&2
  exit 2
fi
{build_cmds}
{time_cmds}
python3 gate.py
cp "model.$(python3 -c 'import json; print(json.load(open("device_result.json"))["chosen"])').engine" model.engine
echo "model.engine is ready"
"""

#: the device half of the gate: the same :func:`edgekd.backends.gate.decide` (its source is copied in), fed with the
#: engines' measured p50 and the accuracies recorded when the bundle was made
GATE_MAIN = """

def p50(path):
    t = sorted(r["computeMs"] if "computeMs" in r else r["latencyMs"] for r in json.load(open(path)))
    return t[len(t) // 2]


if __name__ == "__main__":
    import json
    import os

    m = json.load(open("manifest.json"))
    res = {"fp16_p50_ms": p50("times.fp16.json")}
    if os.path.exists("model.int8.onnx"):
        res["int8_p50_ms"] = p50("times.int8.json")
        exp, g = m["expected_accuracy"], m["gate"]
        res["chosen"], res["reason"] = decide((exp.get("fp16") or exp.get("fp32") or {}).get("top1"),
                                              (exp.get("int8") or {}).get("top1"), res["fp16_p50_ms"], res["int8_p50_ms"],
                                              g["accuracy_budget_points"], g["int8_min_speedup"], "fp16")
    else:
        res["chosen"], res["reason"] = "fp16", "no INT8 model in the bundle (the accuracy half chose FP16)"
    json.dump(res, open("device_result.json", "w"), indent=1)
    print(json.dumps(res, indent=1))
"""


def gate_script() -> str:
    """``gate.py`` for the bundle: :func:`edgekd.backends.gate.decide`, verbatim, plus the device-side main."""
    import inspect

    from edgekd.backends import gate

    return "import json\n\n\n" + inspect.getsource(gate.decide) + GATE_MAIN


def _input_name(onnx_path: Path) -> str:
    import onnx

    g = onnx.load(str(onnx_path), load_external_data=False).graph
    init = {i.name for i in g.initializer}
    return next(i for i in g.input if i.name not in init).name


def write_bundle(profile: Profile, int8_onnx: Path | None, fp32_onnx: Path, out_dir: Path, input_shape: list[int],
                 samples: tuple[np.ndarray, np.ndarray] | None, expected: dict[str, Any], version: str) -> dict[str, Any]:
    """Write the build-on-device bundle (see the module docstring); returns the manifest."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    shutil.copyfile(fp32_onnx, out_dir / "model.fp32.onnx")
    files["fp32_onnx"] = out_dir / "model.fp32.onnx"
    if int8_onnx is not None:
        shutil.copyfile(int8_onnx, out_dir / "model.int8.onnx")
        files["int8_onnx"] = out_dir / "model.int8.onnx"
    input_name = _input_name(fp32_onnx)
    write_text(out_dir / "profile.yaml", yaml.safe_dump(profile.model_dump(exclude={"source"}), sort_keys=False))
    files["profile"] = out_dir / "profile.yaml"
    if samples is not None:
        with open(out_dir / "samples.npz", "wb") as f:
            np.savez(f, x=samples[0].astype(np.float32), y=samples[1].astype(np.int64))
        files["samples"] = out_dir / "samples.npz"
    precisions = ["fp16"] + (["int8"] if int8_onnx is not None else [])
    cmds = {p: trtexec_args(profile, "model.int8.onnx" if p == "int8" else "model.fp32.onnx", f"model.{p}.engine", p,
                            input_name, input_shape) for p in precisions}
    timing = {p: trtexec_timing_args(profile, f"model.{p}.engine", input_name, input_shape, min(profile.measure.batch_sizes),
                                     f"times.{p}.json") for p in precisions}
    build_cmds = "\n".join('"$TRTEXEC" ' + " ".join(shlex.quote(a) for a in c[1:]) for c in cmds.values())
    time_cmds = "\n".join('"$TRTEXEC" ' + " ".join(shlex.quote(a) for a in c[1:]) for c in timing.values())
    sh = BUILD_SH.format(profile=profile.name, version=version, trt_version=profile.device.tensorrt or "any",
                         compute_capability=profile.device.compute_capability or "any", build_cmds=build_cmds,
                         time_cmds=time_cmds)
    write_text(out_dir / "build.sh", sh)
    (out_dir / "build.sh").chmod(0o755)
    files["build_script"] = out_dir / "build.sh"
    write_text(out_dir / "gate.py", gate_script())
    files["gate"] = out_dir / "gate.py"
    lint = lint_qdq(out_dir / "model.int8.onnx", profile.tensorrt.max_opset).as_dict() if int8_onnx is not None else None
    manifest = {
        "edgekd_bundle": 1, "edgekd_version": version, "target": profile.name, "device": profile.device.model_dump(),
        "tensorrt_wanted": profile.device.tensorrt, "compute_capability_wanted": profile.device.compute_capability,
        "onnx": {k: {"file": v.name, "sha256": sha256_file(v)} for k, v in files.items() if k.endswith("onnx")},
        "input": {"name": input_name, "shape": input_shape, "batch_sizes": profile.measure.batch_sizes},
        "trtexec": {p: c for p, c in cmds.items()}, "builder_config": {p: builder_config(profile, p) for p in precisions},
        "gate": {"int8_min_speedup": profile.tensorrt.int8_min_speedup,
                 "accuracy_budget_points": profile.tensorrt.accuracy_budget_points,
                 "accuracy_reason": expected.get("gate_reason", "no accuracy data")},
        "qdq_lint": lint, "expected_accuracy": expected,
        "expected_accuracy_method": "ONNX Runtime with graph optimisations off (reference kernels run the Q/DQ math "
                                    "as written, which is what TensorRT's explicit INT8 computes, up to rounding)",
        "samples": "samples.npz" if samples is not None else None,
    }
    write_json(out_dir / "manifest.json", manifest)
    files["manifest"] = out_dir / "manifest.json"
    readme = (f"# TensorRT bundle for {profile.name}\n\nCopy this folder to the device and run `./build.sh`. It builds "
              f"FP16{' and INT8' if int8_onnx is not None else ''} engines with trtexec (timing cache kept in "
              "`timing.cache`), times them, keeps INT8 only if it beats FP16 by "
              f"{profile.tensorrt.int8_min_speedup}× (`manifest.json` → gate), and copies the winner to `model.engine`.\n\n"
              "Check accuracy on the device (no torch needed): `pip install 'edgekd[runtime]'`, then\n"
              "`edgekd bench model.engine --profile profile.yaml --data samples.npz` and compare with "
              "`expected_accuracy` in manifest.json.\n")
    write_text(out_dir / "README.md", readme)
    files["readme"] = out_dir / "README.md"
    return {"manifest": manifest, "files": files}


def lower_tensorrt(model: Path, profile: Profile, out_dir: Path, *, fp32_onnx: Path, input_shape: list[int],
                   samples: tuple[np.ndarray, np.ndarray] | None = None, expected: dict[str, Any] | None = None,
                   precision: str = "int8") -> dict[str, Any]:
    """Not in the backends registry: besides the model it needs the FP32 ONNX, the input shape, held-out samples and
    the expected accuracy, which the pipeline's lower stage supplies."""
    from edgekd import __version__

    int8 = model if precision == "int8" else None  # the accuracy half of the gate already chose fp16 otherwise
    res = write_bundle(profile, int8, fp32_onnx, out_dir, input_shape, samples, expected or {}, __version__)
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


@register
class TensorrtBackend(Backend):
    """TensorRT (Jetsons, NVIDIA GPUs): explicit-INT8 Q/DQ from ONNX Runtime's quantizer (signed, symmetric, per the
    profile's ``onnxruntime`` settings), lowered to a build-on-device bundle, and to engines where TensorRT and a GPU
    of the profile's compute capability are here. Bench times engines only: the teacher stays an ONNX file."""

    name = "tensorrt"
    #: the bundle's expected accuracy and its on-device INT8-vs-FP16 gate (gate.py) compare top-1
    tasks = ("classify",)
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

    def lower(self, model: Path, profile: Profile, out_dir: Path, inputs: LowerInputs) -> dict[str, Any]:
        """The accuracy half of the INT8 gate is decided here, on ONNX Runtime's reference kernels (FP16 accuracy
        taken as the FP32 model's; the device re-checks with ``gate.py``), then the bundle is written."""
        from edgekd.exporters.parity import run_batched
        from edgekd.runtimes import make_runner

        x, y = inputs.test
        ref = {"graph_optimization": "disable"}
        acc32 = float((run_batched(make_runner("onnxruntime", inputs.fp32_onnx, ref), x).argmax(1) == y).mean())
        expected: dict[str, Any] = {"fp32": {"top1": acc32, "samples": int(len(y))}}
        prec = inputs.precision
        if prec == "int8":
            acc8 = float((run_batched(make_runner("onnxruntime", model, ref), x).argmax(1) == y).mean())
            expected["int8"] = {"top1": acc8, "samples": int(len(y))}
            prec, expected["gate_reason"] = decide(acc32, acc8, None, None, profile.tensorrt.accuracy_budget_points,
                                                   profile.tensorrt.int8_min_speedup, "fp16")
            if prec != "int8":
                expected["gate_reason"] += ": shipping FP16"
        else:
            expected["gate_reason"] = f"precision {prec} requested"
        n = min(1000, len(y))
        res = lower_tensorrt(model, profile, out_dir, fp32_onnx=inputs.fp32_onnx, input_shape=inputs.input_shape,
                             samples=(x[:n], y[:n]), expected=expected, precision=prec)
        res["bundle_precision"] = prec
        res["expected_accuracy"] = expected
        return res

    def unmeasured(self, profile: Profile, build: dict[str, Any], test: tuple[Any, Any],
                   artifact: Path) -> tuple[str, list[dict[str, Any]]] | None:
        if artifact.suffix in self.suffixes:
            return None
        exp = build.get("expected_accuracy", {})
        rows = [{"role": "student", "precision": k, "top1": v["top1"], "samples": v["samples"],
                 "measured_on": "onnxruntime-reference (expected TensorRT accuracy)"}
                for k, v in exp.items() if isinstance(v, dict)]
        return build.get("engine_note") or "no engine", rows

    def bench_roles(self) -> tuple[str, ...]:
        return ()
