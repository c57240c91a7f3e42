"""Device profiles and the CLI's error contract: one line, a hint, exit 2 for usage errors, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import torch

from edgekd import targets
from edgekd.errors import TargetError
from edgekd.targets import resolve
from helpers import make_net

from conftest import REPO


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgekd.cli", *args], capture_output=True, text=True, cwd=cwd or REPO)


def assert_one_line_error(res: subprocess.CompletedProcess[str], *needles: str, code: int = 2) -> None:
    assert res.returncode == code, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    for n in needles:
        assert n in lines[0]
    assert "hint:" in lines[0]


def test_builtin_profiles_and_aliases() -> None:
    names = [p.name for p in targets.list_profiles()]
    for n in ("intel-cpu", "x86-cpu", "raspberry-pi-5", "jetson-orin-nano"):
        assert n in names
    assert resolve("jetson").name == "jetson-orin-nano"
    assert resolve("rpi5").onnxruntime.activation_type == "int8"
    assert resolve("x86-cpu").onnxruntime.reduce_range is True
    assert [p.name for p in targets.list_profiles("*-cpu")] == ["intel-cpu", "x86-cpu"]


def test_user_profile_folder_overrides_and_schema_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = (REPO / "targets" / "x86-cpu.yaml").read_text()
    raw = yaml.safe_load(src)
    raw.update(name="my-box", aliases=["mine"], threads=7)
    (tmp_path / "my-box.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("EDGEKD_TARGETS_PATH", str(tmp_path))
    assert resolve("mine").threads == 7
    (tmp_path / "bad.yaml").write_text("name: bad\nbackend: tpu\n")
    assert "bad" not in targets.all_profiles() and resolve("mine").threads == 7  # a broken file breaks only itself
    with pytest.raises(TargetError, match="bad.yaml"):
        resolve("bad")


def test_cli_targets_lists_with_wildcard() -> None:
    res = cli("targets", "jetson-*")
    assert res.returncode == 0 and "jetson-orin-nano" in res.stdout and "x86-cpu" not in res.stdout


def test_cli_missing_model_file(tmp_path: Path) -> None:
    assert_one_line_error(cli("compress", str(tmp_path / "nope.pt"), "--data", "fashion-mnist"), "does not exist")


def test_cli_pickle_without_opt_in(tmp_path: Path) -> None:
    p = tmp_path / "whole.pt"
    torch.save(make_net(), p)
    res = cli("compress", str(p), "--data", str(tmp_path), "-o", str(tmp_path / "run"))
    assert_one_line_error(res, "pickled", "--allow-pickle")


def test_cli_unknown_target(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    torch.save(make_net().state_dict(), p)
    assert_one_line_error(cli("compress", str(p), "--target", "toaster"), "unknown target 'toaster'", "edgekd targets")
    assert_one_line_error(cli("compress", str(p), "--target", "x86-cpux"), "did you mean x86-cpu")


def test_cli_empty_data_folder(tmp_path: Path) -> None:
    p = tmp_path / "m.pt"
    torch.save(make_net().state_dict(), p)
    (tmp_path / "imgs").mkdir()
    res = cli("compress", str(p), "--arch", "helpers:make_net", "--input-shape", "1x1x28x28", "--data",
              str(tmp_path / "imgs"), "-o", str(tmp_path / "run"), cwd=Path(__file__).parent)
    assert_one_line_error(res, "no images")


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    res = cli("--debug", "compress", str(tmp_path / "nope.pt"))
    assert res.returncode == 2 and "Traceback" in res.stderr


def test_cli_global_flags_after_the_command() -> None:
    """--debug / --quiet work wherever they are written, not only before the command name."""
    res = cli("compress", "nope.pt", "--debug")
    assert res.returncode == 2 and "Traceback" in res.stderr and "No such option" not in res.stderr
    res = cli("targets", "jetson-*", "--quiet")
    assert res.returncode == 0 and "jetson-orin-nano" in res.stdout


def test_cli_unknown_option_is_a_usage_error() -> None:
    res = cli("compress", "--bogus")
    assert res.returncode == 2 and "--bogus" in (res.stderr + res.stdout)


def test_target_auto_picks_this_cpus_profile() -> None:
    from edgekd.benchmark.envinfo import cpu_info
    from edgekd.targets import auto_profile_name, isa_advice

    assert auto_profile_name("x86_64", ["avx2", "avx512f", "avx512_vnni"])[0] == "x86-cpu-vnni"
    assert auto_profile_name("x86_64", ["avx2", "avx_vnni"])[0] == "x86-cpu-vnni"
    assert auto_profile_name("x86_64", ["avx2"])[0] == "x86-cpu"
    assert auto_profile_name("aarch64", ["asimddp"])[0] == "raspberry-pi-5"
    with pytest.raises(TargetError):
        auto_profile_name("riscv64", [])
    cpu = cpu_info()
    if cpu["machine"] in ("x86_64", "aarch64"):
        chosen = resolve("auto")
        assert chosen.name == auto_profile_name(cpu["machine"], cpu.get("isa", []))[0]
        assert isa_advice(chosen) is None  # the machine's own profile draws no advice
        if cpu["machine"] == "x86_64":  # and the other x86 profile does
            other = "x86-cpu" if chosen.name == "x86-cpu-vnni" else "x86-cpu-vnni"
            assert "VNNI" in isa_advice(resolve(other))
