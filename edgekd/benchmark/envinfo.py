"""Environment capture recorded with every result: CPU model and ISA flags, cores, runtime versions, governor.

The INT8 speed-up depends on VNNI/AMX, so a latency number without these is not comparable between machines.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

PACKAGES = ("edgekd", "torch", "onnx", "onnxruntime", "openvino", "nncf", "numpy", "onnxscript", "tensorrt")
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


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def jetson_info() -> dict[str, Any] | None:
    """L4T release, JetPack (from the nvidia-l4t-core package when dpkg is there), power mode (nvpmodel), GPU clock,
    thermal zones. None off Jetson."""
    release = _read("/etc/nv_tegra_release")
    if release is None:
        return None
    import re
    import subprocess

    info: dict[str, Any] = {"l4t": release.splitlines()[0]}
    m = re.search(r"R(\d+) \(release\), REVISION: ([\d.]+)", release)
    if m:
        info["l4t_version"] = f"{m.group(1)}.{m.group(2)}"
    for cmd, key in ((["nvpmodel", "-q"], "power_mode"), (["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"], "jetpack")):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip()
            if out:
                info[key] = out.splitlines()[0].replace("NV Power Mode: ", "")
        except (OSError, subprocess.TimeoutExpired):
            pass
    for f in Path("/sys/devices").glob("**/devfreq/*/cur_freq"):
        if "gpu" in str(f) or "ga10b" in str(f) or "gv11b" in str(f):
            info["gpu_cur_freq_hz"] = _read(str(f))
            break
    temps = {}
    for z in sorted(Path("/sys/class/thermal").glob("thermal_zone*")):
        name, t = _read(str(z / "type")), _read(str(z / "temp"))
        if name and t and t.lstrip("-").isdigit():
            temps[name] = int(t) / 1000.0
    info["temps_c"] = temps
    return info


def capture() -> dict[str, Any]:
    env: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu_info(), "versions": versions()}
    jet = jetson_info()
    if jet:
        env["jetson"] = jet
    return env
