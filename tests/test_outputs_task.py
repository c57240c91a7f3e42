"""The ``outputs`` task (#17 §1): regression, embedding and dict-output models written here, compressed end to end.

Every figure a run reports is recomputed here another way — the deployed ONNX file run with a plain ONNX Runtime
session, the teacher run in PyTorch from the test's own object, and the metrics written out inline — so a packing,
ordering or scoring slip cannot pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgekd.data.datasets import read_idx
from edgekd.errors import DataError
from edgekd.fileio import read_json
from edgekd.tasks import get_task
from edgekd.tasks.auto import choose_task, confirm_classifier
from edgekd.tasks.output_metrics import average_precision, fidelity, target_metrics
from helpers import Embedder, Regressor, TwoHeads

FAST = ["--eval-limit", "120", "--data-limit", "400"]
BENCH = {"iterations": 10, "warmup": 1, "warmup_seconds": 0.01, "rounds": 1}


# ---------------------------------------------------------------------------------------------------- metrics


def test_fidelity_and_target_metrics_match_hand_computed_values() -> None:
    t = np.array([[1.0], [2.0], [3.0], [4.0]])
    s = np.array([[1.0], [2.0], [3.0], [5.0]])
    f = fidelity(t, s)
    assert f["r2"] == pytest.approx(1 - 1 / 5)  # Σ(s−t)² = 1, Σ(t−2.5)² = 5
    assert f["rel_l2"] == pytest.approx(1 / np.sqrt(30))
    assert f["max_abs_diff"] == 1.0 and "cosine" not in f  # a scalar output has no per-sample direction
    assert f["pearson_r"] == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 2, 3, 5])[0, 1])
    e = fidelity(np.array([[1.0, 0], [0, 2]]), np.array([[1.0, 1], [0, -3]]))
    assert e["cosine"] == pytest.approx((1 / np.sqrt(2) - 1) / 2)
    m = target_metrics(s, t)
    assert m == {"mae": 0.25, "rmse": 0.5}
    probs = np.array([[0.9, 0.2], [0.4, 0.8], [0.6, 0.1]])
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    ml = target_metrics(probs, labels)
    # label 0: predicted {0, 2} = true {0, 2} → F1 1; label 1: predicted {1}, true {1, 2} → F1 2/3
    assert ml["f1_macro"] == pytest.approx((1 + 2 / 3) / 2)
    # AP label 0: ranks 0.9 (+), 0.6 (+) → 1; label 1: 0.8 (+), 0.2 (−), 0.1 (+) → (1 + 2/3) / 2
    assert ml["mAP"] == pytest.approx((1 + (1 + 2 / 3) / 2) / 2)


def test_average_precision_equals_the_mean_precision_at_each_positive() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores, labels = rng.random(30), rng.random(30) < 0.3
        order = np.argsort(-scores)
        ranks = np.flatnonzero(labels[order]) + 1
        brute = np.mean([labels[order][:r].sum() / r for r in ranks]) if len(ranks) else np.nan
        got = average_precision(scores, labels)
        assert (np.isnan(brute) and np.isnan(got)) or got == pytest.approx(brute)


# ---------------------------------------------------------------------------------------------------- choosing the task


def test_auto_task_reads_outputs_and_labels_and_refuses_what_it_cannot_tell(tmp_path: Path, fmnist: Path) -> None:
    x = np.zeros((20, 28, 28), np.uint8)
    np.savez(tmp_path / "ints.npz", x=x, y=np.arange(20) % 10)
    np.savez(tmp_path / "floats.npz", x=x, y=np.linspace(0, 1, 200).reshape(20, 10).astype(np.float32))
    np.savez(tmp_path / "scalars.npz", x=x, y=np.linspace(0, 1, 20).astype(np.float32))
    np.savez(tmp_path / "none.npz", x=x)
    assert choose_task(torch.zeros(2, 10), str(fmnist))[0] == "classify"
    assert choose_task(torch.zeros(2, 10), str(tmp_path / "ints.npz"))[0] == "classify"
    assert choose_task(torch.zeros(2, 10), None)[0] == "classify"  # data-free inverts a classifier
    assert choose_task(torch.zeros(2, 1), str(fmnist))[0] == "outputs"
    assert choose_task((torch.zeros(2, 10), torch.zeros(2, 4)), str(fmnist))[0] == "outputs"
    assert choose_task({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, None)[0] == "outputs"
    assert choose_task(torch.zeros(2, 10), str(tmp_path / "floats.npz"))[0] == "outputs"
    assert choose_task(torch.zeros(2, 10), str(tmp_path / "none.npz"))[0] == "outputs"
    assert choose_task(torch.zeros(2, 1), str(tmp_path / "scalars.npz"))[0] == "outputs"  # a scalar regression
    with pytest.raises(DataError, match="not integer class ids"):  # float labels for a classifier's 10 outputs
        choose_task(torch.zeros(2, 10), str(tmp_path / "scalars.npz"))
    # labels of fewer classes than outputs: an embedding with class labels, or a classifier on a subset?
    assert choose_task(torch.zeros(2, 16), str(tmp_path / "ints.npz"))[0] == "classify?"
    torch.manual_seed(0)
    emb, xs = Embedder().eval(), torch.randn(300, 1, 28, 28).numpy()
    labels = np.arange(300) % 10
    with pytest.raises(DataError, match="--task classify .* or --task outputs"):
        confirm_classifier(emb, xs, labels, 16)  # its argmax matches the labels at chance

    class Subset(torch.nn.Module):  # a 16-way "classifier" whose argmax is the label for the first 10 classes
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 16).float()

    xs[:, 0, 0, 0] = labels
    assert "matches 100%" in confirm_classifier(Subset(), xs, labels, 16)


def test_outputs_task_probes_structure_and_scores_packed_outputs() -> None:
    t = get_task("outputs")
    info = t.probe({"labels": torch.zeros(2, 5), "box": torch.zeros(2, 2, 2)})
    assert info == {"structure": "dict", "packed_dim": 9,
                    "outputs": [{"name": "labels", "shape": [5]}, {"name": "box", "shape": [2, 2]}]}
    assert t.output_names(info) == ["labels", "box"]
    assert t.probe((torch.zeros(2, 3), torch.zeros(2)))["outputs"] == [{"name": "output_0", "shape": [3]},
                                                                       {"name": "output_1", "shape": []}]
    with pytest.raises(Exception, match="not a float tensor"):
        t.probe(torch.zeros(2, 3, dtype=torch.long))
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 9))
    out = ref + 0.1 * rng.standard_normal((50, 9))
    sc = t.score(out, ref, info)
    manual = {n: 1 - ((out[:, a:b] - ref[:, a:b]) ** 2).sum() / ((ref[:, a:b] - ref[:, a:b].mean(0)) ** 2).sum()
              for n, a, b in (("labels", 0, 5), ("box", 5, 9))}
    assert sc["fidelity"]["labels"]["r2"] == pytest.approx(manual["labels"])
    assert sc["fidelity_r2"] == pytest.approx(min(manual.values())) and "top1" not in sc


# ---------------------------------------------------------------------------------------------------- end to end


def _images(n: int) -> np.ndarray:
    return read_idx("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")[:n]


def _save_pt2(model: torch.nn.Module, path: Path) -> Path:
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 28, 28),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    return path


def _cli(args: list[str], capsys, tmp_path: Path | None = None, **extra: dict) -> tuple[int, str]:  # noqa: ANN001
    """The CLI; with ``tmp_path``, through a config file holding a short benchmark (the flags override the rest)."""
    import yaml

    from edgekd.cli import main

    if tmp_path is not None:
        model = args[args.index("compress") + 1]
        cfg = tmp_path / "fast.yaml"
        cfg.write_text(yaml.safe_dump({"model": model, "bench": BENCH, **extra}))
        args = [*args, "-c", str(cfg)]
    capsys.readouterr()
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def _eval(run: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with np.load(run / "05-bench" / "eval.npz", allow_pickle=False) as z:
        return z["x"], z["y"], json.loads(str(z["task_info"]))


def _r2(s: np.ndarray, t: np.ndarray) -> float:
    s, t = s.reshape(len(s), -1).astype(np.float64), t.reshape(len(t), -1).astype(np.float64)
    return float(1 - ((s - t) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())


def test_a_regression_model_is_distilled_and_scored_by_fidelity_and_its_targets(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    teacher = Regressor().eval()
    model = _save_pt2(teacher, tmp_path / "reg.pt2")
    x = _images(600)
    targets = (x.reshape(len(x), -1).mean(1, keepdims=True) / 4).astype(np.float32)  # float targets, never cast
    np.savez(tmp_path / "reg.npz", x=x, y=targets)
    run = tmp_path / "run"
    code, out = _cli(["-q", "compress", str(model), "-d", str(tmp_path / "reg.npz"), "-t", "x86-cpu", "-o", str(run),
                      "--student", "resnet-xs", "--epochs", "6", "--batch-size", "32", *FAST], capsys, tmp_path)
    assert code == 0, out
    report = (run / "report.md").read_text()
    assert "fidelity R²" in report and "top-1" not in report
    acc = {(r["role"], r["precision"]): r for r in read_json(run / "05-bench" / "x86-cpu" / "accuracy.json")["results"]}
    assert all("top1" not in r for r in acc.values())
    xe, ye, info = _eval(run)
    assert info["targets"] == {"output": "output", "shape": [1]} and info["outputs"][0]["kind"] == "real"
    with torch.no_grad():
        ref = teacher(torch.from_numpy(xe)).numpy()
    np.testing.assert_allclose(ye[:, :1], ref, atol=1e-4)  # the stored reference is the teacher's own outputs
    sess = ort.InferenceSession(str(run / "04-lower" / "x86-cpu" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: xe})[0]
    int8 = acc[("student", "int8")]
    assert int8["fidelity_r2"] == pytest.approx(_r2(got, ref), abs=1e-4)
    assert int8["target_mae"] == pytest.approx(float(np.abs(got - ye[:, 1:]).mean()), rel=1e-4)
    hist = read_json(run / "01-distill" / "history.json")
    assert hist[-1]["loss_total"] < hist[0]["loss_total"]  # the student trained
    assert hist[-1]["val_fidelity_r2"] > 0.5  # and it learned the teacher's function (an untrained head scores < 0)


def test_a_dict_output_model_keeps_its_named_outputs_and_each_is_scored(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    teacher = TwoHeads().eval()
    model = _save_pt2(teacher, tmp_path / "two.pt2")
    np.savez(tmp_path / "imgs.npz", x=_images(500))  # no targets: fidelity to the teacher only
    run = tmp_path / "run"
    code, out = _cli(["-q", "compress", str(model), "-d", str(tmp_path / "imgs.npz"), "-t", "x86-cpu,intel-cpu",
                      "-o", str(run), "--no-distill", *FAST], capsys, tmp_path,
                     quantize={"min_fidelity_r2": 0.5})  # a random teacher's near-constant probabilities: see below
    assert code == 0, out
    onnx_out = [o.name for o in ort.InferenceSession(str(run / "02-export" / "teacher.onnx")).get_outputs()]
    assert len(onnx_out) == 2
    xe, ye, info = _eval(run)
    assert [(o["name"], o["kind"]) for o in info["outputs"]] == [("labels", "probability"), ("box", "real")]
    assert info["targets"] is None and ye.shape == (len(xe), 9)
    with torch.no_grad():
        ref = teacher(torch.from_numpy(xe))
    for target, path in (("x86-cpu", "04-lower/x86-cpu/model.onnx"),):
        sess = ort.InferenceSession(str(run / path), providers=["CPUExecutionProvider"])
        got = dict(zip(onnx_out, sess.run(None, {sess.get_inputs()[0].name: xe})))
        acc = {(r["role"], r["precision"]): r for r in read_json(run / "05-bench" / target / "accuracy.json")["results"]}
        fid = acc[("teacher", "int8")]["fidelity"]
        # outputs keep the teacher's order (labels, box) whatever the exporter names them
        labels, box = got[onnx_out[0]], got[onnx_out[1]]
        assert fid["labels"]["r2"] == pytest.approx(_r2(labels, ref["labels"].numpy()), abs=1e-4)
        assert fid["box"]["r2"] == pytest.approx(_r2(box, ref["box"].numpy()), abs=1e-4)
        cos = np.mean([np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(box, ref["box"].numpy())])
        assert fid["box"]["cosine"] == pytest.approx(cos, abs=1e-4)
    ov = {(r["role"], r["precision"]): r for r in read_json(run / "05-bench" / "intel-cpu" / "accuracy.json")["results"]}
    assert set(ov[("teacher", "int8")]["fidelity"]) == {"labels", "box"}
    # the INT8 gate compares R² (not a top-1 of outputs that are not logits)
    gate = read_json(run / "03-quantize" / "intel-cpu" / "calibration.json")["parity_int8_vs_fp32_val"]
    assert gate["agreement_metric"].startswith("R²") and "top1_agreement" not in gate
    assert gate["agreement"] == pytest.approx(min(f["r2"] for f in gate["fidelity"].values()))


def test_an_embedding_with_class_labels_needs_the_task_named(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    torch.manual_seed(2)
    model = _save_pt2(Embedder().eval(), tmp_path / "emb.pt2")
    x = _images(400)
    np.savez(tmp_path / "cls.npz", x=x, y=(np.arange(len(x)) % 10).astype(np.int64))
    run = tmp_path / "run"
    code, out = _cli(["compress", str(model), "-d", str(tmp_path / "cls.npz"), "-t", "x86-cpu", "-o", str(run)], capsys)
    assert code == 2 and "--task" in out and "Traceback" not in out and not run.exists()
    code, out = _cli(["-q", "compress", str(model), "-d", str(tmp_path / "cls.npz"), "-t", "x86-cpu", "-o", str(run),
                      "--task", "outputs", "--no-distill", *FAST], capsys, tmp_path)
    assert code == 0, out
    _, _, info = _eval(run)
    assert info["outputs"][0]["kind"] == "unit_norm" and info["targets"] is None  # class ids do not score embeddings
    acc = {(r["role"], r["precision"]): r for r in read_json(run / "05-bench" / "x86-cpu" / "accuracy.json")["results"]}
    assert acc[("teacher", "int8")]["fidelity"]["output"]["cosine"] > 0.9 and "top1" not in acc[("teacher", "int8")]


def test_a_classification_run_with_float_labels_is_refused_in_one_line(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from helpers import make_net

    model = _save_pt2(make_net().eval(), tmp_path / "cls.pt2")
    np.savez(tmp_path / "f.npz", x=_images(50), y=np.linspace(0, 9, 50).astype(np.float32))
    code, out = _cli(["compress", str(model), "-d", str(tmp_path / "f.npz"), "--task", "classify", "-o",
                      str(tmp_path / "run")], capsys)
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("error")]
    assert code == 2 and len(lines) == 1 and "float" in lines[0] and "Traceback" not in out


def test_qat_of_a_model_that_is_not_a_classifier_is_refused_before_the_run_directory(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from helpers import Regressor

    model = _save_pt2(Regressor().eval(), tmp_path / "reg.pt2")
    np.savez(tmp_path / "reg.npz", x=_images(60), y=np.linspace(0, 1, 60, dtype=np.float32)[:, None])
    code, out = _cli(["-q", "compress", str(model), "-d", str(tmp_path / "reg.npz"), "--qat", "kd", "-o",
                      str(tmp_path / "run")], capsys)
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("error")]
    assert code == 2 and len(lines) == 1 and "QAT" in lines[0] and "outputs" in lines[0] and "Traceback" not in out
    assert not (tmp_path / "run").exists()
