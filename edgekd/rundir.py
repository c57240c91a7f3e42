"""Run directory, manifest, hashing and resume.

    runs/<name>/
      manifest.json       config, versions, input hashes, per-stage status/timings/metrics/output hashes
      00-synth/ (data-free runs)  01-distill/ 02-export/ 03-quantize/<target>/ 04-lower/<target>/ 05-bench/<target>/
      03-sensitivity/<target>/ 03-plan/<target>/ (with quantize.plan: the precision planner)
      report.md report.json pareto.png

Stage order differs from DESIGN.md's sketch in one place: post-training quantization runs on the exported ONNX
graph with the target runtime's own tool (ONNX Runtime ``quantize_static``, NNCF on the OpenVINO model), so
``export`` (fp32 + parity) comes before ``quantize``. QAT (``quantize/qat``, target-independent, in
``03-quantize/qat/``) trains the fake-quant student in PyTorch and exports its own Q/DQ graph, which each target's
quantize stage then takes.

A stage is skipped when the manifest says it finished with the same key — the hash of its config section and its
inputs' hashes — and its recorded outputs are still on disk with the same hashes. Every file is written atomically,
and the manifest is rewritten atomically after each state change, so killing a run at any point loses at most the
stage in progress (and the distill stage resumes from its last epoch checkpoint).
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgekd import progress
from edgekd.errors import EdgekdError, UsageError
from edgekd.fileio import read_json, sha256_json, sha256_path, write_json

MANIFEST = "manifest.json"
LOCK, LOCK_PID = ".edgekd.lock", ".edgekd.pid"
FILESYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS)
_HELD: dict[str, Any] = {}  # run directories this process has locked (held until it exits)
STAGE_DIRS = {"synth": "00-synth", "distill": "01-distill", "export": "02-export", "quantize": "03-quantize", "sensitivity": "03-sensitivity", "plan": "03-plan", "lower": "04-lower", "bench": "05-bench"}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class StageResult:
    """What a stage function returns: files it wrote (relative to the run dir) and metrics."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


class RunDirError(UsageError):
    """The run directory cannot be used: not writable, disk full, in use by another run, not an edgekd run."""


def filesystem_error(e: OSError, what: str) -> RunDirError:
    """One line for an OSError met while writing ``what`` (permission, disk full, read-only, …)."""
    reason = e.strerror or type(e).__name__
    hint = {errno.ENOSPC: "free some space, or pass --run-dir on another disk",
            errno.EDQUOT: "free some space, or pass --run-dir on another disk",
            errno.EFBIG: "raise the file-size limit (ulimit -f), or pass --run-dir on another disk",
            errno.EACCES: "pass a --run-dir you can write to", errno.EPERM: "pass a --run-dir you can write to",
            errno.EROFS: "pass a --run-dir on a writable disk"}.get(e.errno or 0, "pass another --run-dir")
    return RunDirError(f"cannot write {what}: {reason}", hint)


class RunDir:
    """One run's folder. Opened for writing (``create=True``) it must be new, empty or an edgekd run, and it is
    locked for this process (a second run into it gets one line naming this one's PID)."""

    def __init__(self, root: str | Path, create: bool = True) -> None:
        self.root = Path(root)
        self._lock = None
        if create:
            if self.root.exists() and not self.root.is_dir():
                raise RunDirError(f"run directory {self.root} is a file", "pass a folder for --run-dir")
            if self.root.is_dir() and not (self.root / MANIFEST).exists() and any(self.root.iterdir()):
                raise RunDirError(f"{self.root} exists and is not an edgekd run directory (no {MANIFEST})",
                                  "pass a new or empty folder with --run-dir")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise filesystem_error(e, f"run directory {self.root}") from None
            self._acquire_lock()
        elif not (self.root / MANIFEST).is_file():
            raise UsageError(f"{self.root} is not an edgekd run directory (no {MANIFEST})", "pass the folder that edgekd compress created")
        path = self.root / MANIFEST
        if path.exists():
            try:
                self.manifest: dict[str, Any] = read_json(path)
                if not isinstance(self.manifest, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as e:
                raise RunDirError(f"the manifest of {self.root} is corrupt ({str(e)[:80]})",
                                  "start a new run with another --run-dir") from None
        else:
            self.manifest = {"edgekd_run": 1, "created": now(), "stages": {}}
        self.manifest.setdefault("stages", {})

    def _acquire_lock(self) -> None:
        """An exclusive lock on the folder for this process's lifetime (filelock: flock on POSIX, released by the OS
        when the process ends, however it ends)."""
        from filelock import FileLock, Timeout

        key = str(self.root.resolve())
        if key in _HELD:  # this process already owns the folder (e.g. the API called twice): flock is per open file
            self._lock = _HELD[key]
            return
        lock = FileLock(str(self.root / LOCK))
        pid_file = self.root / LOCK_PID
        try:
            lock.acquire(timeout=0)
        except Timeout:
            try:
                holder = pid_file.read_text().strip() or "unknown"
            except OSError:
                holder = "unknown"
            raise RunDirError(f"run directory {self.root} is in use by another edgekd run (PID {holder})",
                              "wait for it to finish, or pass another --run-dir") from None
        except OSError as e:
            raise filesystem_error(e, f"run directory {self.root}") from None
        self._lock = _HELD[key] = lock
        try:
            pid_file.write_text(str(os.getpid()))
        except OSError as e:
            raise filesystem_error(e, f"run directory {self.root}") from None

    # ------------------------------------------------------------------ manifest
    def save(self) -> None:
        try:
            write_json(self.root / MANIFEST, self.manifest)
        except OSError as e:
            raise filesystem_error(e, f"{self.root / MANIFEST}") from None

    def set(self, key: str, value: Any) -> None:
        self.manifest[key] = value
        self.save()

    def stage_dir(self, stage: str, target: str | None = None) -> Path:
        d = self.root / STAGE_DIRS[stage]
        return d / target if target else d

    def record(self, stage_id: str) -> dict[str, Any] | None:
        return self.manifest["stages"].get(stage_id)

    def output(self, stage_id: str, name: str) -> Path:
        rec = self.record(stage_id)
        if not rec or rec.get("status") != "done" or name not in rec.get("outputs", {}):
            raise UsageError(f"stage {stage_id} has not produced {name!r} in {self.root}", "run the earlier stages first (edgekd compress)")
        return self.root / rec["outputs"][name]

    def output_hash(self, stage_id: str) -> str:
        rec = self.record(stage_id) or {}
        return sha256_json(rec.get("output_hashes", {}))

    # ------------------------------------------------------------------ stages
    def _is_fresh(self, rec: dict[str, Any] | None, key: str) -> bool:
        if not rec or rec.get("status") != "done" or rec.get("key") != key:
            return False
        for name, rel in rec.get("outputs", {}).items():
            p = self.root / rel
            if not p.exists() or sha256_path(p) != rec.get("output_hashes", {}).get(name):
                return False
        return True

    def run_stage(self, stage_id: str, key_material: dict[str, Any], fn: Callable[[], StageResult], *, force: bool = False) -> dict[str, Any]:
        """Run ``fn`` unless an identical finished result is on record; return the stage record."""
        key = sha256_json(key_material)
        rec = self.record(stage_id)
        if not force and self._is_fresh(rec, key):
            progress.log(f"{stage_id}: up to date, skipped")
            assert rec is not None
            return {**rec, "skipped": True}
        self.manifest["stages"][stage_id] = {"status": "running", "key": key, "started": now()}
        self.save()
        t0 = time.time()
        try:
            res = fn()
        except BaseException as e:
            if isinstance(e, OSError) and e.errno in FILESYSTEM_ERRNOS:
                e = filesystem_error(e, f"stage {stage_id} outputs in {self.root}")
            self.manifest["stages"][stage_id].update(
                status="failed" if isinstance(e, Exception) else "interrupted",
                error=(e.one_line() if isinstance(e, EdgekdError) else f"{type(e).__name__}: {e}")[:500],
                seconds=round(time.time() - t0, 2))
            try:
                self.save()
            except RunDirError:
                pass  # the disk that just failed may refuse the manifest too; the original error is the one to report
            if isinstance(e, RunDirError):
                raise e from None
            raise
        rec = {
            "status": "done", "key": key, "started": self.manifest["stages"][stage_id]["started"], "finished": now(),
            "seconds": round(time.time() - t0, 2), "outputs": res.outputs,
            "output_hashes": {k: sha256_path(self.root / v) for k, v in res.outputs.items()}, "metrics": res.metrics,
        }
        self.manifest["stages"][stage_id] = rec
        self.save()
        return rec

    def rel(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def fresh_dir(self, stage: str, target: str | None = None, keep: tuple[str, ...] = ()) -> Path:
        """Empty the stage folder (but ``keep`` names, e.g. epoch checkpoints) and return it."""
        d = self.stage_dir(stage, target)
        if d.exists():
            for p in d.iterdir():
                if p.name in keep:
                    continue
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        d.mkdir(parents=True, exist_ok=True)
        return d

