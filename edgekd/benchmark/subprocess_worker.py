"""Run the benchmark worker (:mod:`edgekd.benchmark.worker`) in a fresh interpreter and return its JSON.

One process per artifact: peak memory belongs to that artifact alone and runtimes do not share thread pools. Used by
the pipeline's bench stage and by the device-side runner alike (torch-free).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgekd.errors import StageError


def run_worker(backend: str, model: Path, data: Path | None, settings: dict[str, Any], warmup: int, iterations: int,
               batch_sizes: list[int], logits_out: Path | None, task: str = "classify",
               metric: str | None = None) -> dict[str, Any]:
    args = ["--backend", backend, "--model", str(model), "--settings", json.dumps(settings), "--warmup", str(warmup),
            "--iterations", str(iterations), "--batch-sizes", ",".join(map(str, batch_sizes)), "--task", task]
    if data is not None:
        args += ["--data", str(data)]
    if logits_out is not None:
        args += ["--logits-out", str(logits_out)]
    if metric:  # the user's metric, named by the person running edgekd (never by a file)
        args += ["--metric", metric]
    return _run_module("edgekd.benchmark.worker", args, f"benchmark of {model.name} on {backend}")


def _run_module(module: str, args: list[str], what: str) -> dict[str, Any]:
    """``python -m module args`` with this checkout importable; its last stdout line as JSON, or one-line error."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        if os.environ.get("EDGEKD_DEBUG"):
            print(proc.stderr or proc.stdout, file=sys.stderr)
        raise StageError(f"{what} failed: {tail[0][:120]}", "re-run with --debug to see the worker's full output")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_alternating(backend: str, models: list[Path], settings: dict[str, Any], warmup: int, iterations: int,
                    rounds: int) -> dict[str, Any]:
    """:mod:`edgekd.benchmark.alternating` in a fresh interpreter: every artifact timed against the others in
    alternating rounds in one process (the precision planner's timer)."""
    return _run_module("edgekd.benchmark.alternating",
                       ["--backend", backend, "--models", json.dumps([str(m) for m in models]),
                        "--settings", json.dumps(settings), "--warmup", str(warmup), "--iterations", str(iterations),
                        "--rounds", str(rounds)], f"timing of {len(models)} artifacts")
