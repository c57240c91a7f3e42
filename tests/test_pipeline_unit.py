"""Run directory semantics without training: stage keys, skip, output tampering, failure records, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekd.fileio import atomic_path, read_json
from edgekd.rundir import RunDir, StageResult
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


def _ctx(tmp_path: Path, **sections):  # noqa: ANN003, ANN202
    from conftest import DEMO_TEACHER

    from edgekd.config import build_config
    from edgekd.context import open_run

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (120, 28, 28), dtype=np.uint8), y=np.arange(120) % 10)
    cfg = build_config(model=str(DEMO_TEACHER), targets=["x86-cpu"], run_dir=str(tmp_path / "run"),
                       data={"path": str(tmp_path / "d.npz")}, **sections)
    return open_run(cfg)


def test_every_input_a_stage_reads_is_in_its_key(tmp_path: Path) -> None:
    """The QAT stage reads the export opset and the seed; its key must change with them (issue #16: the hand-built
    key left both out, so a stale QAT result was reused). Keys come from one place: the runner."""
    from edgekd.runner import STAGES

    qat = STAGES.get("quantize/qat")
    base = _ctx(tmp_path, quantize={"qat": "kd"})
    key = base.runner.key_material(qat, None)
    for change in ({"export": {"opset": 18}}, {"distill": {"seed": 1}}, {"quantize": {"qat": "kd", "qat_lr": 1e-3}}):
        other = _ctx(tmp_path, **{"quantize": {"qat": "kd"}, **change})
        assert other.runner.key_material(qat, None) != key, change
    same = _ctx(tmp_path, quantize={"qat": "kd"}, bench={"iterations": 99})
    assert same.runner.key_material(qat, None) == key  # the bench section is not QAT's business


def test_a_run_directory_from_an_earlier_format_is_refused(tmp_path: Path) -> None:
    from edgekd.fileio import write_json
    from edgekd.rundir import RunDirError

    (tmp_path / "run").mkdir()
    write_json(tmp_path / "run" / "manifest.json", {"edgekd_run": 1, "stages": {"distill": {"status": "done"}}})
    with pytest.raises(RunDirError, match="earlier edgekd"):
        _ctx(tmp_path)


def test_a_section_override_keeps_the_config_files_other_keys(tmp_path: Path) -> None:
    """``compress(config=..., distill__seed=3)`` (and ``--epochs`` with ``--config``) change one key of a section; the
    file's other keys in that section (the student, the batch size) stay."""
    from edgekd.config import load_config_file

    f = tmp_path / "c.yaml"
    f.write_text("model: m.pt2\ntargets: [x86-cpu]\ndistill:\n  student: mobilenet-s\n  batch_size: 32\n  epochs: 4\n")
    cfg = load_config_file(f, {"distill": {"seed": 3, "epochs": 2}})
    assert (cfg.distill.student, cfg.distill.batch_size, cfg.distill.seed, cfg.distill.epochs) == ("mobilenet-s", 32, 3, 2)


def test_paths_in_the_file_are_the_files_and_paths_given_by_the_caller_are_the_callers(tmp_path: Path) -> None:
    """A config's run_dir and data path are relative to the file; `-o runs/x` and `--data d` on the command line are
    relative to the working directory, even when the file's folder holds a folder of the same name (the override
    used to be resolved against the config's folder: `edgekd distill -c examples/demo-detect.yaml -o runs/x` wrote
    examples/runs/x)."""
    from edgekd.config import load_config_file

    conf = tmp_path / "conf"
    (conf / "d").mkdir(parents=True)
    (conf / "m.pt2").write_bytes(b"")
    f = conf / "c.yaml"
    f.write_text("model: m.pt2\ntargets: [x86-cpu]\nrun_dir: r\ndata:\n  path: d\n")
    cfg = load_config_file(f)
    assert (cfg.model, cfg.run_dir, cfg.data.path) == (str(conf / "m.pt2"), str(conf / "r"), str(conf / "d"))
    cfg = load_config_file(f, {"run_dir": "runs/x", "data": {"path": "d"}, "model": "m.pt2"})
    assert (cfg.model, cfg.run_dir, cfg.data.path) == ("m.pt2", "runs/x", "d")


def test_report_lists_only_failures_of_the_targets_the_config_asks_for_now(tmp_path: Path) -> None:
    """A run re-made with other targets keeps the old target's failed record, but it is not this run's outcome."""
    from edgekd.benchmark.report import failures

    run = RunDir(tmp_path)
    run.manifest["config"] = {"targets": ["intel-cpu", "auto"]}
    run.manifest["environment"] = {"cpu": {"machine": "x86_64", "isa": ["avx2", "avx512_vnni"]}}
    run.manifest["stages"] = {"quantize/x86-cpu": {"status": "failed", "error": "old gate"},
                              "quantize/x86-cpu-vnni": {"status": "failed", "error": "new gate"},
                              "quantize/intel-cpu": {"status": "done"}, "distill": {"status": "interrupted"}}
    assert failures(run) == {"quantize/x86-cpu-vnni": "new gate", "distill": "interrupted"}
    run.manifest["environment"]["cpu"]["isa"] = ["avx2"]  # auto on a CPU without VNNI is x86-cpu
    assert set(failures(run)) == {"quantize/x86-cpu", "distill"}
