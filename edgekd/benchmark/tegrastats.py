"""Jetson telemetry: parse ``tegrastats`` lines, sample them during a timed run, and turn power into energy.

A tegrastats line (JetPack 5/6; older releases print rails as ``VDD_IN 3788/3788`` without units)::

    RAM 2448/7620MB (lfb 1x4MB) SWAP 0/3810MB (cached 0MB) CPU [2%@1510,1%@1510,off,off] EMC_FREQ 0%
    GR3D_FREQ 45% cpu@48.25C gpu@47.5C tj@48.25C VDD_IN 4412mW/4412mW VDD_CPU_GPU_CV 483mW/483mW VDD_SOC 1449mW/1449mW

Energy per inference = mean input power over the timed window × window length / inferences in it, using the
board's total input rail (``VDD_IN``, or ``POM_5V_IN`` on Jetson Nano/TX2) when present.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from typing import Any

_RAM = re.compile(r"RAM (\d+)/(\d+)MB")
_CPU = re.compile(r"CPU \[([^\]]*)\]")
_GR3D = re.compile(r"GR3D_FREQ (\d+)%(?:@\[?(\d+)\]?)?")
_EMC = re.compile(r"EMC_FREQ (\d+)%(?:@(\d+))?")
_TEMP = re.compile(r"([A-Za-z0-9_]+)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]+) (\d+)(?:mW)?/(\d+)(?:mW)?\b")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN")


def parse_line(line: str) -> dict[str, Any]:
    """One tegrastats line → {ram_used_mb, ram_total_mb, cpu: [{load, mhz}|None], gpu_load, gpu_mhz, emc_load,
    temps_c: {name: °C}, power_mw: {rail: current mW}, power_avg_mw: {rail: running-average mW}}."""
    out: dict[str, Any] = {"temps_c": {}, "power_mw": {}, "power_avg_mw": {}}
    if m := _RAM.search(line):
        out["ram_used_mb"], out["ram_total_mb"] = int(m.group(1)), int(m.group(2))
    if m := _CPU.search(line):
        cores = []
        for c in m.group(1).split(","):
            c = c.strip()
            cm = re.fullmatch(r"(\d+)%@(\d+)", c)
            cores.append({"load": int(cm.group(1)), "mhz": int(cm.group(2))} if cm else None)
        out["cpu"] = cores
    if m := _GR3D.search(line):
        out["gpu_load"] = int(m.group(1))
        if m.group(2):
            out["gpu_mhz"] = int(m.group(2))
    if m := _EMC.search(line):
        out["emc_load"] = int(m.group(1))
    for name, val in _TEMP.findall(line):
        out["temps_c"][name.lower()] = float(val)
    for rail, cur, avg in _RAIL.findall(line):
        if rail in ("RAM", "SWAP", "CPU", "EMC_FREQ", "GR3D_FREQ"):
            continue
        out["power_mw"][rail] = int(cur)
        out["power_avg_mw"][rail] = int(avg)
    return out


def total_power_mw(sample: dict[str, Any]) -> float | None:
    for rail in TOTAL_RAILS:
        if rail in sample.get("power_mw", {}):
            return float(sample["power_mw"][rail])
    rails = sample.get("power_mw", {})
    return float(sum(rails.values())) if rails else None


def summarize(samples: list[dict[str, Any]], seconds: float | None = None, inferences: int | None = None) -> dict[str, Any]:
    """Means over the samples, peak temperatures, and energy per inference (mJ) when ``seconds`` and ``inferences``
    are given: E = P̄_in · t / n."""
    if not samples:
        return {"samples": 0}
    powers = [p for p in (total_power_mw(s) for s in samples) if p is not None]
    temps: dict[str, float] = {}
    for s in samples:
        for k, v in s["temps_c"].items():
            temps[k] = max(temps.get(k, v), v)
    gpu = [s["gpu_load"] for s in samples if "gpu_load" in s]
    out: dict[str, Any] = {"samples": len(samples), "peak_temps_c": temps,
                           "gpu_load_mean": sum(gpu) / len(gpu) if gpu else None,
                           "ram_used_mb_max": max((s.get("ram_used_mb", 0) for s in samples), default=None)}
    if powers:
        p = sum(powers) / len(powers)
        out["power_in_mw_mean"] = p
        if seconds and inferences:
            out["energy_per_inference_mj"] = p * seconds / inferences  # mW·s = mJ
    return out


class TegrastatsSampler:
    """``with TegrastatsSampler(100) as s: ...`` runs ``tegrastats --interval 100`` in the background; ``s.samples``
    holds the parsed lines. Does nothing (``available`` False) where tegrastats is not installed."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.samples: list[dict[str, Any]] = []
        self.available = shutil.which("tegrastats") is not None
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self.seconds = 0.0

    def __enter__(self) -> "TegrastatsSampler":
        self._t0 = time.perf_counter()
        if self.available:
            self._proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.samples.append(parse_line(line))

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
