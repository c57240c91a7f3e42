"""The TensorRT build-on-device bundle (:func:`write_bundle`; its layout is in :mod:`edgekd.backends.tensorrt`'s
docstring): the ONNX models, held-out samples, the profile, ``build.sh`` (trtexec build and timing), ``gate.py`` (the
INT8-vs-FP16 rule, copied from :mod:`edgekd.backends.gate`) and the manifest with the expected accuracy."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.backends.tensorrt import builder_config, trtexec_args, trtexec_timing_args
from edgekd.backends.tensorrt_lint import lint_qdq
from edgekd.fileio import sha256_file, write_json, write_text
from edgekd.targets import Profile


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
        # gate_value: the task's primary metric, higher is better, 100 x a difference = points (tensorrt.gate_value)
        res["chosen"], res["reason"] = decide((exp.get("fp16") or exp.get("fp32") or {}).get("gate_value"),
                                              (exp.get("int8") or {}).get("gate_value"), res["fp16_p50_ms"], res["int8_p50_ms"],
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
                 samples: tuple[np.ndarray, np.ndarray] | None, expected: dict[str, Any], version: str,
                 task_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the build-on-device bundle (see the module docstring); returns the manifest. ``samples.npz`` holds the
    held-out inputs and targets, and ``task_info`` (JSON: the task and what its torch-free scorer needs, e.g. a
    detector's decoding) so the device can score an engine's outputs as the expected accuracy was scored here."""
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
            y = samples[1]  # labels stay integers; boxes, regression targets stay floats
            np.savez(f, x=samples[0].astype(np.float32), y=y.astype(np.int64) if np.issubdtype(y.dtype, np.integer) else y,
                     task_info=np.array(json.dumps(task_info or {})))
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
