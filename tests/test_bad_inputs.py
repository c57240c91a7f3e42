"""Issue #15: every bad input and fault gets one line naming the problem and the fix, with the right exit code, no
traceback, no code run from a file without opt-in (a marker file proves it), and nothing already computed lost.

Exit codes (README, edgekd.errors): 2 bad input or usage, 3 a failed gate (report and passing artifacts kept),
130 Ctrl-C, 1 only for a bug. Most cases call the CLI in-process (``edgekd.cli.main``); the ones that need another
process (a second run holding the lock, Ctrl-C, a file-size limit standing in for a full disk) run it as one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from helpers import FAST_BENCH
from edgekd.cli import main

MAX_LINE = 200


# ------------------------------------------------------------------------------------------------ helpers


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["-q", *args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The single error line of a failed command (warnings aside); fails the test on tracebacks or extra lines."""
    assert "Traceback" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(("error: ", "interrupted")), line
    assert len(line) <= MAX_LINE, (len(line), line)
    return line


def expect(capsys: pytest.CaptureFixture[str], code: int, *words: str, args: tuple[str, ...]) -> str:
    got, _, err = cli(capsys, *args)
    line = error_line(err)
    assert got == code, (got, line)
    for w in words:
        assert w.lower() in line.lower(), (w, line)
    return line


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash (the lock's pid file aside)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (".edgekd.pid", ".edgekd.lock")}


class Payload:
    """Unpickling this runs ``touch <marker>``: the proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def rewrite_zip(src: Path, dst: Path, edit) -> None:  # noqa: ANN001
    """Copy a zip archive member by member, ``edit(relative_name, bytes) -> bytes``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            rel = item.filename.split("/", 1)[1]
            zout.writestr(item, edit(rel, zin.read(item.filename)))


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    m = tmp_path / "PAYLOAD_RAN"
    yield m
    assert not m.exists(), "a file ran code without --allow-pickle"


@pytest.fixture(scope="module")
def state_dict_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return REPO / "examples" / "fmnist_teacher.state_dict.pt"


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory, fmnist: Path) -> Path:
    """A finished run on a real Fashion-MNIST slice (small, so the module stays fast)."""
    import edgekd

    root = tmp_path_factory.mktemp("good") / "run"
    edgekd.compress(REPO / "examples" / "fmnist_teacher.pt2", targets=["x86-cpu"], run_dir=str(root),
                    data={"path": "fashion-mnist", "limit": 600, "eval_limit": 300},
                    distill={"student": "resnet-xs", "epochs": 1, "batch_size": 64, "lr": 0.05},
                    quantize={"calibration": "small"}, bench={"iterations": 10, "warmup": 1, "warmup_seconds": 0.01, "rounds": 1})
    return root


def small(*extra: str) -> tuple[str, ...]:
    return ("--data", "fashion-mnist", "--data-limit", "600", "--eval-limit", "300", "--student", "resnet-xs",
            "--epochs", "1", "--calibration", "small", *extra)


# ------------------------------------------------------------------------------------------------ code from files


def test_pt2_with_pickled_sample_inputs_is_refused(capsys, tmp_path, marker) -> None:  # noqa: ANN001
    evil = tmp_path / "evil.pt2"
    payload = pickle.dumps(Payload(marker))
    rewrite_zip(REPO / "examples" / "fmnist_teacher.pt2", evil,
                lambda rel, b: payload if rel.startswith("data/sample_inputs/") else b)
    for cmd in (("inspect", str(evil)), ("compress", str(evil), "-t", "x86-cpu", "-o", str(tmp_path / "r"))):
        expect(capsys, 2, "pickled", "--allow-pickle", args=cmd)
    assert not (tmp_path / "r").exists()


def test_pt2_with_use_pickle_weights_is_refused(capsys, tmp_path, marker) -> None:  # noqa: ANN001
    evil = tmp_path / "evil.pt2"
    state = {}

    def edit(rel: str, b: bytes) -> bytes:
        if rel.endswith("_weights_config.json"):
            cfg = json.loads(b)
            first = next(iter(cfg["config"]))
            cfg["config"][first]["use_pickle"] = True
            state["file"] = cfg["config"][first]["path_name"]
            return json.dumps(cfg).encode()
        return b

    rewrite_zip(REPO / "examples" / "fmnist_teacher.pt2", tmp_path / "step.pt2", edit)
    rewrite_zip(tmp_path / "step.pt2", evil,
                lambda rel, b: pickle.dumps(Payload(marker)) if rel == f"data/weights/{state['file']}" else b)
    expect(capsys, 2, "pickled", args=("inspect", str(evil)))


def test_the_safety_guard_blocks_unsafe_unpickling_even_past_the_inspection(marker) -> None:  # noqa: ANN001
    from edgekd.models.safe_load import UnsafeUnpickling, no_unsafe_unpickling

    buf = io.BytesIO()
    pickle.dump(Payload(marker), buf)
    with no_unsafe_unpickling():
        for load in (lambda: torch.load(io.BytesIO(buf.getvalue()), weights_only=False),
                     lambda: pickle.loads(buf.getvalue())):
            with pytest.raises(UnsafeUnpickling):
                load()
        with pytest.raises(pickle.UnpicklingError):
            torch.load(io.BytesIO(buf.getvalue()))  # forced weights_only=True


@pytest.mark.parametrize("factory", ["evil_factory.py:make", "evil_module:make"])
def test_state_dict_metadata_never_imports_a_factory(capsys, tmp_path, marker, factory, monkeypatch) -> None:  # noqa: ANN001
    code = f"import os\nos.system('touch {marker}')\ndef make():\n    raise SystemExit\n"
    (tmp_path / "evil_factory.py").write_text(code)
    (tmp_path / "evil_module.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    sd = torch.load(REPO / "examples" / "fmnist_teacher.state_dict.pt", weights_only=True)
    torch.save({"edgekd": {"arch": factory}, "state_dict": sd}, tmp_path / "m.pt")
    for cmd in (("inspect", "m.pt"), ("compress", "m.pt", "-t", "x86-cpu", "-o", str(tmp_path / "r"))):
        expect(capsys, 2, factory, "--arch", args=cmd)


def test_bench_ignores_the_manifests_pickle_opt_in(capsys, tmp_path, marker, good_run) -> None:  # noqa: ANN001
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    torch.save(Payload(marker), tmp_path / "pickled.pt")
    man = json.loads((run / "manifest.json").read_text())
    man["config"]["model"] = str(tmp_path / "pickled.pt")
    man["config"]["allow_pickle"] = True
    (run / "manifest.json").write_text(json.dumps(man))
    before = snapshot(run)
    expect(capsys, 2, "pickled", "--allow-pickle", args=("bench", str(run)))
    assert snapshot(run) == before


def test_bench_of_a_run_made_with_a_factory_needs_it_named_again(capsys, tmp_path, marker, good_run) -> None:  # noqa: ANN001
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    (tmp_path / "f.py").write_text(f"import os\nos.system('touch {marker}')\n")
    man = json.loads((run / "manifest.json").read_text())
    man["config"]["arch"] = f"{tmp_path / 'f.py'}:make"
    (run / "manifest.json").write_text(json.dumps(man))
    expect(capsys, 2, "--arch", "factory", args=("bench", str(run)))


def test_random_bytes_are_called_corrupt_not_a_pickle(capsys, tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    line = expect(capsys, 2, "random.pt", "corrupt", args=("inspect", str(tmp_path / "random.pt")))
    assert "allow-pickle" not in line


def test_truncated_torch_save_file_is_called_corrupt(capsys, tmp_path) -> None:  # noqa: ANN001
    data = (REPO / "examples" / "fmnist_teacher.state_dict.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    line = expect(capsys, 2, "cut.pt", args=("inspect", str(tmp_path / "cut.pt"), "--arch", "resnet-l"))
    assert "allow-pickle" not in line


def test_a_pickled_module_names_the_opt_in(capsys, tmp_path, marker) -> None:  # noqa: ANN001
    torch.save(Payload(marker), tmp_path / "whole.pt")
    expect(capsys, 2, "pickled", "--allow-pickle", args=("inspect", str(tmp_path / "whole.pt")))


# ------------------------------------------------------------------------------------------------ model files


@pytest.mark.parametrize("content,words", [(b"not a zip at all", ("zip",)), ("half", ("zip",))])
def test_damaged_pt2_gets_one_line_and_no_torch_traceback(capsys, tmp_path, content, words) -> None:  # noqa: ANN001
    data = (REPO / "examples" / "fmnist_teacher.pt2").read_bytes()
    (tmp_path / "bad.pt2").write_bytes(data[: len(data) // 2] if content == "half" else content)
    expect(capsys, 2, "bad.pt2", *words, args=("inspect", str(tmp_path / "bad.pt2")))


def test_state_dict_that_does_not_fit_the_arch(capsys, state_dict_file) -> None:  # noqa: ANN001
    expect(capsys, 2, "does not fit", "resnet-s", args=("inspect", str(state_dict_file), "--arch", "resnet-s"))


def test_state_dict_without_arch(capsys, state_dict_file) -> None:  # noqa: ANN001
    expect(capsys, 2, "--arch", args=("inspect", str(state_dict_file)))


def test_arch_module_that_does_not_exist(capsys, state_dict_file) -> None:  # noqa: ANN001
    expect(capsys, 2, "nosuchmodule", args=("inspect", str(state_dict_file), "--arch", "nosuchmodule:make"))


def test_missing_model_and_folder_as_model(capsys, tmp_path) -> None:  # noqa: ANN001
    expect(capsys, 2, "does not exist", args=("inspect", str(tmp_path / "nope.pt2")))
    expect(capsys, 2, "folder", args=("inspect", str(tmp_path)))
    expect(capsys, 2, "does not exist", args=("compress", str(tmp_path / "nope.pt2"), "-t", "x86-cpu"))


def test_torchscript_errors_are_cut_to_one_short_line(capsys, tmp_path) -> None:  # noqa: ANN001
    """A traced 3-channel model called with 1 channel: TorchScript's error runs to thousands of characters."""
    traced = torch.jit.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()), torch.randn(1, 3, 28, 28))
    torch.jit.save(traced, str(tmp_path / "rgb.pt"))
    expect(capsys, 2, "does not accept", "--input-shape", args=("compress", str(tmp_path / "rgb.pt"), "-t", "x86-cpu",
                                                                "--input-shape", "1x1x28x28", "-o", str(tmp_path / "r")))


def test_bad_input_shape(capsys, state_dict_file) -> None:  # noqa: ANN001
    expect(capsys, 2, "shape", args=("inspect", str(state_dict_file), "--arch", "resnet-l", "--input-shape", "abc"))


# ------------------------------------------------------------------------------------------------ config and flags


def test_unknown_loss_is_refused_before_any_data_is_loaded(capsys, tmp_path) -> None:  # noqa: ANN001
    teacher = str(REPO / "examples" / "fmnist_teacher.pt2")
    expect(capsys, 2, "nosuch", args=("compress", teacher, "-t", "x86-cpu", "--loss", "nosuch", "-o", str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("params,word", [({"temperature": 0}, "temperature"), ({"tau": 2}, "tau"),
                                         ({"warmup": 20}, "warmup")])
def test_bad_loss_parameters(capsys, tmp_path, params, word) -> None:  # noqa: ANN001
    import yaml

    cfg = {"model": str(REPO / "examples" / "fmnist_teacher.pt2"), "targets": ["x86-cpu"], "run_dir": "r",
           "data": {"path": "fashion-mnist"}, "distill": {"loss": "dkd", "loss_params": params}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    expect(capsys, 2, word, args=("compress", "--config", str(tmp_path / "c.yaml")))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flag,value", [("--mean", "abc"), ("--std", "0.3,x"), ("--mean", "nan")])
def test_bad_mean_std(capsys, tmp_path, flag, value) -> None:  # noqa: ANN001
    expect(capsys, 2, flag, args=("compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu", flag, value))


def test_set_reaches_every_config_key_and_refuses_bad_ones(capsys, tmp_path) -> None:  # noqa: ANN001
    from edgekd.api import _config, _nest
    from edgekd.cli_args import sets as _sets

    teacher = str(REPO / "examples" / "fmnist_teacher.pt2")
    cfg = _config(teacher, None, **_nest(_sets(["quantize.plan.max_drop=0.5", "quantize.plan.ranking_samples=500",
                                                "data.path=fashion-mnist", "bench.rounds=2", "distill.augment=false"])))
    assert (cfg.quantize.plan.max_drop, cfg.quantize.plan.ranking_samples) == (0.5, 500)
    assert (cfg.data.path, cfg.bench.rounds, cfg.distill.augment) == ("fashion-mnist", 2, False)
    base = ("compress", teacher, "-t", "x86-cpu", "-o", str(tmp_path / "r"))
    expect(capsys, 2, "nosuch", args=(*base, "--set", "distill.loss=nosuch"))  # it reached distill.loss
    expect(capsys, 2, "ranking_sample", args=(*base, "--set", "quantize.plan.max_drop=1", "--set", "quantize.plan.ranking_sample=3"))
    expect(capsys, 2, "--set", "SECTION.KEY=VALUE", args=(*base, "--set", "quantize.plan.max_drop"))
    expect(capsys, 2, "--set", args=(*base, "--set", "quantize.plan=1", "--set", "quantize.plan.max_drop=1"))
    assert not (tmp_path / "r").exists()


def test_unknown_target_key_and_config_problems(capsys, tmp_path) -> None:  # noqa: ANN001
    teacher = str(REPO / "examples" / "fmnist_teacher.pt2")
    expect(capsys, 2, "nosuch-device", args=("compress", teacher, "-t", "nosuch-device"))
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    expect(capsys, 2, "bad.yaml", args=("compress", "--config", str(tmp_path / "bad.yaml")))
    (tmp_path / "extra.yaml").write_text(f"model: {teacher}\ntargets: [x86-cpu]\nditsill: {{epochs: 1}}\n")
    expect(capsys, 2, "ditsill", args=("compress", "--config", str(tmp_path / "extra.yaml")))
    expect(capsys, 2, "nope.yaml", args=("compress", "--config", str(tmp_path / "nope.yaml")))


def test_a_bad_profile_breaks_only_itself(capsys, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "broken.yaml").write_text("name: broken\nbackend: [\n")
    monkeypatch.setenv("EDGEKD_TARGETS_PATH", str(tmp_path))
    code, out, err = cli(capsys, "targets")
    assert code == 0 and "x86-cpu" in out and "broken.yaml" in err
    expect(capsys, 2, "broken.yaml", args=("targets", "show", "broken"))


def test_onnx_teacher_without_data_is_refused_with_the_reason(capsys, good_run) -> None:  # noqa: ANN001
    expect(capsys, 2, "onnx", "gradients", args=("compress", str(good_run / "02-export" / "teacher.onnx"), "-t", "x86-cpu"))


# ------------------------------------------------------------------------------------------------ data


def _npz(tmp_path: Path, name: str, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(tmp_path / name, x=x, y=y)
    return str(tmp_path / name)


@pytest.mark.parametrize("case,words", [
    ("three_channels", ("3 channel", "wants 1")),
    ("nan", ("nan",)),
    ("float_labels", ("float", "integer")),
    ("one_class", ("one class",)),
    ("negative_labels", ("-1",)),
])
def test_bad_npz_data(capsys, tmp_path, case, words) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (200, 28, 28), dtype=np.uint8)
    y = np.arange(200) % 10
    if case == "three_channels":
        x = rng.integers(0, 255, (200, 3, 28, 28), dtype=np.uint8)
    elif case == "nan":
        x = x.astype(np.float32) / 255
        x[3, 4, 5] = np.nan
    elif case == "float_labels":
        y = rng.standard_normal(200).astype(np.float32)
    elif case == "one_class":
        y = np.zeros(200, np.int64)
    elif case == "negative_labels":
        y = y - 1
    data = _npz(tmp_path, "d.npz", x, y)
    expect(capsys, 2, *words, args=("compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu",
                                    "--data", data, "-o", str(tmp_path / "r")))
    assert not any((tmp_path / "r").glob("01-*")), "no stage may run on bad data"


def _image_folder(root: Path, classes: int, mode: str = "L") -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(6):
            shape = (28, 28) if mode == "L" else (28, 28, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(root / f"c{c}" / f"{i}.png")
    return root


def test_corrupt_png_is_named(capsys, tmp_path) -> None:  # noqa: ANN001
    root = _image_folder(tmp_path / "imgs", 3)
    (root / "c1" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    expect(capsys, 2, "3.png", args=("compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu",
                                     "--data", str(root), "-o", str(tmp_path / "r")))


def test_image_folder_with_one_class(capsys, tmp_path) -> None:  # noqa: ANN001
    root = _image_folder(tmp_path / "imgs", 1)
    expect(capsys, 2, "one class", args=("compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu",
                                         "--data", str(root), "-o", str(tmp_path / "r")))


def test_rgb_images_for_a_grey_model_are_converted_with_a_warning(capsys, tmp_path) -> None:  # noqa: ANN001
    from edgekd.data import load_dataset

    root = _image_folder(tmp_path / "imgs", 3, mode="RGB")
    capsys.readouterr()
    ds = load_dataset(root, channels=1, size=(28, 28))
    assert ds.train.x.shape[1] == 1
    err = capsys.readouterr().err
    assert "warning: converted 18 RGB image(s)" in err and "grayscale" in err


def test_missing_data_path_creates_no_run_directory(capsys, tmp_path) -> None:  # noqa: ANN001
    expect(capsys, 2, "does not exist", args=("compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu",
                                              "--data", str(tmp_path / "none"), "-o", str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ run directories


def test_a_bad_model_leaves_a_good_run_untouched(capsys, tmp_path, good_run) -> None:  # noqa: ANN001
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(1).bytes(2048))
    before = snapshot(good_run)
    expect(capsys, 2, "random.pt", args=("compress", str(tmp_path / "random.pt"), "-t", "x86-cpu", "-o", str(good_run)))
    assert snapshot(good_run) == before
    code, out, _ = cli(capsys, "report", str(good_run))
    assert code == 0 and "| x86-cpu | onnxruntime | student | int8 |" in out


def test_run_directory_that_is_a_file_or_someone_elses_folder(capsys, tmp_path) -> None:  # noqa: ANN001
    teacher = str(REPO / "examples" / "fmnist_teacher.pt2")
    (tmp_path / "afile").write_text("x")
    expect(capsys, 2, "afile", args=("compress", teacher, "-t", "x86-cpu", *small(), "-o", str(tmp_path / "afile")))
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("precious")
    expect(capsys, 2, "not an edgekd run", args=("compress", teacher, "-t", "x86-cpu", *small(), "-o", str(home)))
    assert sorted(p.name for p in home.iterdir()) == ["thesis.tex"]


def test_config_run_dir_pointing_outside_is_refused(capsys, tmp_path) -> None:  # noqa: ANN001
    import yaml

    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("keep")
    cfg = {"model": str(REPO / "examples" / "fmnist_teacher.pt2"), "targets": ["x86-cpu"], "run_dir": "../..",
           "data": {"path": "fashion-mnist"}}
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    expect(capsys, 2, "not an edgekd run", args=("compress", "--config", str(work / "c.yaml")))
    assert (tmp_path / "notes.txt").read_text() == "keep" and not (tmp_path / "manifest.json").exists()


def test_unwritable_run_directory(capsys) -> None:  # noqa: ANN001
    expect(capsys, 2, "cannot write", args=("compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu",
                                            *small(), "-o", "/proc/edgekd-run"))


def test_truncated_manifest(capsys, tmp_path, good_run) -> None:  # noqa: ANN001
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    text = (run / "manifest.json").read_text()
    (run / "manifest.json").write_text(text[: len(text) // 2])
    for cmd in (("bench", str(run)), ("report", str(run))):
        expect(capsys, 2, "corrupt", args=cmd)


def test_bench_artifact_problems(capsys, tmp_path, good_run) -> None:  # noqa: ANN001
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    expect(capsys, 2, "bad.onnx", "not a valid onnx", args=("bench", str(tmp_path / "bad.onnx"), "--profile", "x86-cpu"))
    import shutil

    shutil.copy(good_run / "02-export" / "student.onnx", tmp_path / "s.onnx")
    shutil.copy(tmp_path / "s.onnx", tmp_path / "model.xml")  # an .xml whose .bin is missing
    expect(capsys, 2, "model.bin", args=("bench", str(tmp_path / "model.xml"), "--profile", "intel-cpu"))
    expect(capsys, 2, "--profile", args=("bench", str(tmp_path / "s.onnx")))
    (tmp_path / "d.npz").write_bytes(b"nope")
    expect(capsys, 2, "d.npz", args=("bench", str(tmp_path / "s.onnx"), "--profile", "x86-cpu", "--data",
                                     str(tmp_path / "d.npz")))


def test_a_second_run_into_a_locked_directory_names_the_holder(capsys, tmp_path, good_run) -> None:  # noqa: ANN001
    import shutil

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r); from edgekd.rundir import RunDir; RunDir(%r); "
        "print('locked', flush=True); time.sleep(60)") % (str(REPO), str(run))], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        line = expect(capsys, 2, "in use", f"PID {holder.pid}", args=("bench", str(run)))
        assert "--run-dir" in line
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_full_disk_fails_in_one_line_and_records_the_stage(tmp_path: Path, fmnist: Path) -> None:
    """RLIMIT_FSIZE stands in for a full disk: a write past the limit fails with EFBIG, as ENOSPC would."""
    import resource

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "edgekd.cli", "-q", "compress", str(REPO / "examples" / "fmnist_teacher.pt2"),
                          "-t", "x86-cpu", *small(), "-o", str(run)], capture_output=True, text=True, cwd=REPO,
                         preexec_fn=limit, timeout=600)
    line = error_line(res.stderr)
    assert res.returncode == 2 and "cannot write" in line, (res.returncode, line)
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages and all(s["status"] in ("done", "failed") for s in stages.values()), stages
    assert any(s["status"] == "failed" for s in stages.values())


def test_ctrl_c_prints_one_line_and_keeps_what_finished(tmp_path: Path, fmnist: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "compress", str(REPO / "examples" / "fmnist_teacher.pt2"),
                             "-t", "x86-cpu", "--data", "fashion-mnist", "--data-limit", "3000", "--student", "resnet-xs",
                             "--epochs", "20", "-o", str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    deadline = time.time() + 300
    while time.time() < deadline and not (run / "01-distill" / "ckpt" / "last.pt").exists():
        time.sleep(0.5)
    assert (run / "01-distill" / "ckpt" / "last.pt").exists(), "distillation never finished an epoch"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    lines = [ln for ln in err.splitlines() if ln.startswith(("interrupted", "error", "Traceback"))]
    assert lines == ["interrupted: finished stages are kept in the run directory; run the same command again to resume"]
    rec = json.loads((run / "manifest.json").read_text())["stages"]["distill"]
    assert rec["status"] == "interrupted" and (run / "01-distill" / "ckpt" / "last.pt").exists()


# ------------------------------------------------------------------------------------------------ gates and files


def test_a_failed_gate_exits_3_and_writes_the_report(capsys, tmp_path, fmnist) -> None:  # noqa: ANN001
    import yaml

    cfg = {"model": str(REPO / "examples" / "fmnist_teacher.pt2"), "targets": ["x86-cpu"], "run_dir": str(tmp_path / "r"),
           "data": {"path": "fashion-mnist", "limit": 600, "eval_limit": 300},
           "distill": {"student": "resnet-xs", "epochs": 1}, "export": {"atol": 1e-12}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    line = expect(capsys, 3, "tolerance", args=("compress", "--config", str(tmp_path / "c.yaml")))
    assert str(tmp_path / "r") in line or "report" in line
    run = tmp_path / "r"
    assert (run / "01-distill" / "student.pt").exists(), "the distilled student (it passed) is kept"
    report = (run / "report.md").read_text()
    assert "**Failed**" in report and "export" in report and "tolerance" in report


def test_atomic_writes_follow_the_umask(tmp_path: Path) -> None:
    from edgekd.fileio import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def test_tiny_data_shrinking_is_said(capsys, tmp_path, fmnist) -> None:  # noqa: ANN001
    code, _, err = cli(capsys, "compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu", "--data",
                       "fashion-mnist", "--data-limit", "120", "--eval-limit", "40", "--student", "resnet-xs", "--epochs",
                       "1", "-o", str(tmp_path / "r"), *FAST_BENCH)
    assert code == 0, err[-2000:]
    assert "calibration asked for 300 samples" in err
    report = (tmp_path / "r" / "report.md").read_text()
    assert "fewer than the 300" in report


def test_unknown_student_is_refused_before_any_data_is_loaded(capsys, tmp_path) -> None:  # noqa: ANN001
    expect(capsys, 2, "nosuch-net", args=("compress", str(REPO / "examples" / "fmnist_teacher.pt2"), "-t", "x86-cpu",
                                          "--student", "nosuch-net", "-o", str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()
