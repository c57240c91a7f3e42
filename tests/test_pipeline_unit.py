"""Run directory semantics without training: stage keys, skip, output tampering, failure records, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekd.fileio import atomic_path, read_json
from edgekd.pipeline import RunDir, StageResult
from edgekd.quant.calibration import load_recipe, select
from edgekd.data import ArraySplit, Dataset
from edgekd.errors import UsageError


def _writer(run: RunDir, text: str, calls: list[int]):  # noqa: ANN202
    def fn() -> StageResult:
        calls.append(1)
        p = run.root / "01-distill" / "out.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return StageResult({"out": "01-distill/out.txt"}, {"n": len(text)})

    return fn


def test_stage_skips_when_key_and_outputs_match(tmp_path: Path) -> None:
    run, calls = RunDir(tmp_path), []
    run.run_stage("distill", {"a": 1}, _writer(run, "x", calls))
    rec = run.run_stage("distill", {"a": 1}, _writer(run, "x", calls))
    assert calls == [1] and rec["skipped"]
    assert "skipped" not in read_json(tmp_path / "manifest.json")["stages"]["distill"]
    run.run_stage("distill", {"a": 2}, _writer(run, "x", calls))  # config changed → re-run
    assert len(calls) == 2
    (tmp_path / "01-distill" / "out.txt").write_text("tampered")  # output changed on disk → re-run
    run.run_stage("distill", {"a": 2}, _writer(run, "x", calls))
    assert len(calls) == 3
    assert RunDir(tmp_path).record("distill")["metrics"] == {"n": 1}  # the manifest reloads from disk


def test_failed_stage_is_recorded_and_not_trusted(tmp_path: Path) -> None:
    run = RunDir(tmp_path)

    def boom() -> StageResult:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        run.run_stage("export", {}, boom)
    rec = read_json(tmp_path / "manifest.json")["stages"]["export"]
    assert rec["status"] == "failed" and "disk full" in rec["error"]
    with pytest.raises(UsageError, match="has not produced"):
        run.output("export", "student")


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_not_a_run_dir(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not an edgekd run"):
        RunDir(tmp_path, create=False)


def test_calibration_recipes_are_class_balanced_and_seeded() -> None:
    y = np.repeat(np.arange(5), [50, 40, 30, 20, 10])
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1)
    ds = Dataset(ArraySplit(x, y), ArraySplit(x[:5], y[:5]), ArraySplit(x[:5], y[:5]), 5)
    r = load_recipe("default")
    cx, cy = select(ds, r, count=50)
    assert np.bincount(cy).tolist() == [10, 10, 10, 10, 10]
    cx2, _ = select(ds, r, count=50)
    assert np.array_equal(cx, cx2)
    assert len(select(ds, load_recipe("small"))[0]) == 64
    with pytest.raises(UsageError, match="default"):
        load_recipe("nope")
