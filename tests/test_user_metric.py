"""``--metric path.py:fn`` (#17 §1): a user metric scores every artifact, headlines the report, and runs only when the
person running the command names it. The figures are recomputed here from plain ONNX Runtime sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekd.errors import ConfigError
from edgekd.fileio import read_json
from edgekd.tasks import get_task
from edgekd.tasks.user_metric import with_metric
from helpers import Regressor
from test_outputs_task import FAST, _cli, _eval, _images, _save_pt2

METRIC = '''
import numpy as np

def top2(outputs, targets):
    z = outputs["logits"]
    best2 = np.argsort(-z, 1)[:, :2]
    return {"top2": float((best2 == targets[:, None]).any(1).mean()), "n_scored": float(len(z))}
top2.primary = "top2"

def first_key(outputs, targets):
    return {"mean_logit": float(outputs["logits"].mean()), "other": 1.0}

def clash(outputs, targets):
    return {"top1": 0.0}

def broken(outputs, targets):
    raise KeyError("boxes")

def not_a_dict(outputs, targets):
    return 0.5

def within(outputs, targets):
    err = np.abs(outputs["output"] - targets)
    return {"abs_err_p90": float(np.quantile(err, 0.9)), "within_0_02": float((err <= 0.02).mean())}
within.primary = "abs_err_p90"
within.higher_is_better = False
'''


@pytest.fixture()
def metric_file(tmp_path: Path) -> Path:
    f = tmp_path / "my_metric.py"
    f.write_text(METRIC)
    return f


def test_the_user_metric_is_added_to_the_tasks_own_scores_and_becomes_primary(metric_file: Path) -> None:
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((50, 5)).astype(np.float32), rng.integers(0, 5, 50)
    task = with_metric(get_task("classify"), f"{metric_file}:top2")
    res = task.score(z, y)
    order = np.argsort(-z, 1)
    assert res["top2"] == pytest.approx(np.mean([y[i] in order[i, :2] for i in range(50)]))
    assert res["top1"] == pytest.approx(np.mean(z.argmax(1) == y)) and res["n_scored"] == 50
    assert task.primary == "top2" and task.base.primary == "top1" and task.name == "classify"
    assert task.agreement(z, z) == 1.0  # the gates keep the task's own agreement
    undeclared = with_metric(get_task("classify"), f"{metric_file}:first_key")
    assert undeclared.score(z, y)["mean_logit"] == pytest.approx(float(z.mean())) and undeclared.primary == "mean_logit"


@pytest.mark.parametrize("fn, words", [("clash", "the classify task reports"), ("broken", "failed: KeyError"),
                                       ("not_a_dict", "not a non-empty dict"), ("missing", "cannot import")])
def test_a_bad_user_metric_is_one_line_naming_it(metric_file: Path, fn: str, words: str) -> None:
    z, y = np.eye(3, dtype=np.float32), np.arange(3)
    with pytest.raises(ConfigError) as e:
        with_metric(get_task("classify"), f"{metric_file}:{fn}").score(z, y)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_run_is_scored_by_the_user_metric_on_every_artifact_and_the_device_runner(tmp_path: Path, metric_file: Path,
                                                                                     capsys) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = _save_pt2(Regressor().eval(), tmp_path / "reg.pt2")
    x = _images(600)
    np.savez(tmp_path / "reg.npz", x=x, y=(x.reshape(len(x), -1).mean(1, keepdims=True) / 4).astype(np.float32))
    run, spec = tmp_path / "run", f"{metric_file}:within"
    code, out = _cli(["-q", "compress", str(model), "-d", str(tmp_path / "reg.npz"), "-t", "x86-cpu", "-o", str(run),
                      "--no-distill", "--metric", spec, *FAST], capsys, tmp_path)
    assert code == 0, out
    report = (run / "report.md").read_text()
    assert "abs_err_p90" in report and "(lower is better)" in report
    xe, ye, info = _eval(run)
    sess = ort.InferenceSession(str(run / "04-lower" / "x86-cpu" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: xe})[0]
    err = np.abs(got - ye[:, info["packed_dim"]:])  # the user's targets follow the stored teacher reference
    acc = {(r["role"], r["precision"]): r for r in read_json(run / "05-bench" / "x86-cpu" / "accuracy.json")["results"]}
    int8 = acc[("teacher", "int8")]
    assert int8["abs_err_p90"] == pytest.approx(float(np.quantile(err, 0.9)), rel=1e-4)
    assert int8["within_0_02"] == pytest.approx(float((err <= 0.02).mean()))
    assert "fidelity_r2" in int8  # the task's own metrics stay beside it
    manifest = read_json(run / "manifest.json")
    assert manifest["inputs"]["model"]["metric_primary"] == "abs_err_p90"
    assert manifest["stages"]["bench/x86-cpu"]["metrics"]["abs_err_p90"] == int8["abs_err_p90"]

    # the run's record of the metric is not an opt-in: re-benchmarking needs it named again
    from edgekd.cli import main

    capsys.readouterr()
    assert main(["-q", "bench", str(run)]) == 2
    err_line = capsys.readouterr().err.strip()
    assert "--metric" in err_line and len(err_line.splitlines()) == 1

    # the torch-free device runner scores an artifact with the eval file's task and the metric
    capsys.readouterr()
    assert main(["-q", "bench", str(run / "04-lower" / "x86-cpu" / "model.onnx"), "--profile", "x86-cpu",
                 "--data", str(run / "05-bench" / "eval.npz"), "--metric", spec]) == 0
    printed = capsys.readouterr().out
    assert "abs_err_p90" in printed and f"{float(np.quantile(err, 0.9)):.4f}" in printed
