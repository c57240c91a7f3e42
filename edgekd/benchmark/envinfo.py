"""Environment capture recorded with every result: CPU model and ISA flags, cores, runtime versions, governor.

The INT8 speed-up depends on VNNI/AMX, so a latency number without these is not comparable between machines.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

PACKAGES = ("edgekd", "torch", "onnx", "onnxruntime", "openvino", "nncf", "numpy", "onnxscript")
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "asimddp", "sve", "i8mm")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            out[p] = None
    return out


def cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "logical_cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and "model" not in info:
            info["model"] = val.strip()
        if key in ("flags", "Features") and "isa" not in info:
            flags = set(val.split())
            info["isa"] = [f for f in ISA_FLAGS if f in flags]
    gov = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if gov.exists():
        try:
            info["governor"] = gov.read_text().strip()
        except OSError:
            pass
    return info


def capture() -> dict[str, Any]:
    return {"platform": platform.platform(), "cpu": cpu_info(), "versions": versions()}
