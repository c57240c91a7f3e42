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
    cmd = [sys.executable, "-m", "edgekd.benchmark.worker", "--backend", backend, "--model", str(model), "--settings",
           json.dumps(settings), "--warmup", str(warmup), "--iterations", str(iterations),
           "--batch-sizes", ",".join(map(str, batch_sizes)), "--task", task]
    if data is not None:
        cmd += ["--data", str(data)]
    if logits_out is not None:
        cmd += ["--logits-out", str(logits_out)]
    if metric:  # the user's metric, named by the person running edgekd (never by a file)
        cmd += ["--metric", metric]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        if os.environ.get("EDGEKD_DEBUG"):
            print(proc.stderr or proc.stdout, file=sys.stderr)
        raise StageError(f"benchmark of {model.name} on {backend} failed: {tail[0][:120]}",
                         "re-run with --debug to see the worker's full output")
    return json.loads(proc.stdout.strip().splitlines()[-1])
