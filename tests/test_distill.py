"""Trainer, feature KD through module-path hooks, DDP under torchrun, and KD on real Fashion-MNIST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.config import DistillConfig, FeaturePairConfig
from edgekd.data import load_dataset
from edgekd.kd.features import FeatureRecorder, get_module
from edgekd.kd.trainer import lr_at, train_student
from edgekd.errors import UsageError
from edgekd.models.zoo import build_model
from conftest import free_port
from helpers import TinyNet


def test_bad_module_path_names_close_matches() -> None:
    with pytest.raises(UsageError, match="layer2") as e:
        get_module(build_model("resnet-s", 1, 10), "layer2.0.conv9")
    assert "did you mean" in str(e.value)


def test_recorder_captures_named_outputs() -> None:
    m = build_model("mobilenet-se-s", 1, 10)
    rec = FeatureRecorder(m, ["blocks.1", "head"])
    m(torch.zeros(2, 1, 28, 28))
    feats = rec.pop()
    assert feats["blocks.1"].shape[:2] == (2, 32) and feats["head"].shape[1] == 128
    rec.close()


def test_cosine_schedule_with_warmup() -> None:
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)


def test_feature_kd_trains_adapters_and_student(idx_dir: Path, tmp_path: Path) -> None:
    data = load_dataset(idx_dir, val_fraction=0.25)
    torch.manual_seed(0)
    teacher = build_model("resnet-xs", 1, 10).eval()
    student = TinyNet()
    cfg = DistillConfig(epochs=2, batch_size=16, lr=0.05, features=[FeaturePairConfig(student="features.2", teacher="layer2")])
    res = train_student(teacher, student, data, cfg, ckpt_dir=tmp_path)
    h = res.history
    assert len(h) == 2 and h[0]["loss_feature"] > 0 and h[1]["loss_feature"] < h[0]["loss_feature"]
    assert (tmp_path / "last.pt").exists()


def test_checkpoint_resume_continues_from_last_epoch(idx_dir: Path, tmp_path: Path) -> None:
    data = load_dataset(idx_dir, val_fraction=0.25)
    teacher = TinyNet().eval()
    cfg2 = DistillConfig(epochs=2, batch_size=16)
    torch.manual_seed(3)
    train_student(teacher, TinyNet(), data, DistillConfig(epochs=1, batch_size=16), ckpt_dir=tmp_path)
    # same cfg but 2 epochs: the trainer picks up the 1-epoch checkpoint and only trains epoch 2
    res = train_student(teacher, TinyNet(), data, cfg2, ckpt_dir=tmp_path)
    assert res.resumed_from_epoch == 1 and [r["epoch"] for r in res.history] == [1, 2]


def test_trainer_runs_unchanged_under_torchrun_ddp(idx_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(Path(__file__).parent / "ddp_worker.py"), str(idx_dir), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and r0["epochs"] == 2
    assert r0["digest"] == r1["digest"], "DDP ranks ended with different weights"
    assert (tmp_path / "last.pt").exists()  # only rank 0 writes


def test_kd_beats_labels_alone_on_real_data(fmnist: Path) -> None:
    """Real Fashion-MNIST slice: a KD student (from a trained teacher) beats the same student trained on labels.

    Small data makes the gap large and stable: 2,000 train images, teacher trained on the full training set.
    """
    pytest.importorskip("onnxruntime")
    from conftest import DEMO_TEACHER
    from edgekd.models.loading import load_model

    teacher = load_model(DEMO_TEACHER).module
    data = load_dataset("fashion-mnist", mean=[0.2860], std=[0.3530], limit=1000)
    data.val = data.val.take(2000)
    accs = {}
    for loss in ("ce", "kd"):
        torch.manual_seed(0)
        student = build_model("resnet-xs", 1, 10)
        res = train_student(teacher, student, data, DistillConfig(loss=loss, epochs=6, batch_size=64, lr=0.05))
        accs[loss] = res.history[-1]["val_top1"]
    assert accs["kd"] > accs["ce"] + 0.005, accs


def test_mixup_batch_is_a_convex_combination_with_matching_soft_targets() -> None:
    import numpy as np

    from edgekd.kd.trainer import mixup_batch

    np.random.seed(0)
    # image i is constant i and has label i, so a mixed image's value is the soft target's expected label
    x = torch.stack([torch.full((1, 4, 4), float(i)) for i in range(16)])
    y = torch.arange(16)
    xm, y_hard, soft = mixup_batch(x, y, 1.0, 16)
    assert xm.shape == x.shape and soft.shape == (16, 16)
    assert torch.allclose(soft.sum(1), torch.ones(16))
    assert torch.allclose(xm[:, 0, 0, 0], soft @ torch.arange(16.0), atol=1e-5)
    assert (xm.flatten(1).std(1) < 1e-6).all()
    assert not torch.allclose(xm, x)
    # the dominant hard label carries at least half of the soft target's mass
    assert (soft.gather(1, y_hard[:, None]).squeeze(1) >= 0.5 - 1e-6).all()


def test_mixup_refuses_a_cached_teacher(idx_dir: Path) -> None:
    from edgekd.errors import ConfigError

    data = load_dataset(str(idx_dir))
    cfg = DistillConfig(student="resnet-s", epochs=1, mixup=1.0, teacher_cache="on")
    with pytest.raises(ConfigError, match="mixup"):
        train_student(TinyNet(), build_model("resnet-s", 1, 10), data, cfg)


def test_data_free_runs_default_to_function_matching_unless_told_otherwise() -> None:
    from edgekd.config import build_config

    free = build_config(model="m.pt")
    assert free.distill.mixup == 1.0 and free.distill.augment is True and free.distill.epochs == 1000
    told = build_config(model="m.pt", distill={"mixup": 0.0, "augment": False, "epochs": 5})
    assert told.distill.mixup == 0.0 and told.distill.augment is False and told.distill.epochs == 5
    real = build_config(model="m.pt", data={"path": "fashion-mnist"})
    assert real.distill.mixup == 0.0 and real.distill.augment is False and real.distill.epochs == 10


def test_val_split_is_scored_every_n_epochs_and_after_the_last(idx_dir: Path) -> None:
    data = load_dataset(idx_dir, val_fraction=0.25)
    teacher = TinyNet().eval()
    res = train_student(teacher, TinyNet(), data, DistillConfig(epochs=5, batch_size=16, eval_every=2))
    assert [h["epoch"] for h in res.history if "val_top1" in h] == [2, 4, 5]
    assert DistillConfig(epochs=10).eval_interval() == 1 and DistillConfig(epochs=300).eval_interval() == 15


def test_a_teacher_far_below_its_recorded_accuracy_is_called_out(tmp_path: Path, fmnist: Path, capsys) -> None:  # noqa: ANN001
    """The demo teacher records 93 % test top-1; fed images normalised with the wrong statistics (ImageNet's mean as
    if the data were RGB-normalised) it scores far lower, and the run says why before anything is trained."""
    import edgekd
    from conftest import DEMO_TEACHER

    edgekd.distill(DEMO_TEACHER, targets=["x86-cpu"], run_dir=str(tmp_path / "run"),
                   data={"path": "fashion-mnist", "limit": 300, "mean": [0.9], "std": [0.05]},
                   distill={"student": "resnet-xs", "epochs": 1})
    err = capsys.readouterr().err
    assert "warning: the teacher scores" in err and "normalisation" in err and "class order" in err


def test_weight_ema_follows_the_ramped_formula_and_averages_bn_statistics() -> None:
    from torch import nn

    from edgekd.kd.trainer import WeightEMA

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = WeightEMA(model, decay=0.9)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()
        model(torch.randn(8, 3))  # moves the BN running statistics
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in model.state_dict().items():
            expected[k] = d * expected[k] + (1 - d) * v if v.dtype.is_floating_point else v.clone()
    for k, v in ema.module.state_dict().items():
        assert torch.allclose(v.float(), expected[k].float(), atol=1e-6), k
    assert not torch.allclose(ema.module[0].weight, model[0].weight)  # the average lags the raw weights
    assert ema.module[1].num_batches_tracked.item() == 5


def test_ema_student_is_the_average_and_resumes(idx_dir: Path, tmp_path: Path) -> None:
    data = load_dataset(idx_dir, val_fraction=0.25)
    teacher = TinyNet().eval()
    torch.manual_seed(1)
    plain = train_student(teacher, TinyNet(), data, DistillConfig(epochs=2, batch_size=16, seed=4)).student
    torch.manual_seed(1)
    avg = train_student(teacher, TinyNet(), data, DistillConfig(epochs=2, batch_size=16, seed=4, ema=0.99),
                        ckpt_dir=tmp_path).student
    # same seed, same steps: only the averaging differs, so the returned weights must differ
    diff = max((a - b).abs().max().item() for a, b in zip(plain.state_dict().values(), avg.state_dict().values())
               if a.dtype.is_floating_point)
    assert diff > 1e-4
    assert "ema" in torch.load(tmp_path / "last.pt", weights_only=True)
    again = train_student(teacher, TinyNet(), data, DistillConfig(epochs=2, batch_size=16, seed=4, ema=0.99),
                          ckpt_dir=tmp_path)  # finished: resumes at epoch 2 and hands back the stored average
    assert again.resumed_from_epoch == 2
    for a, b in zip(avg.state_dict().values(), again.student.state_dict().values()):
        assert torch.equal(a, b)


def test_a_class_order_other_than_the_models_is_called_out(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Image-folder labels are the sorted folder names' indices; a model whose metadata lists its classes in another
    order would be scored against shuffled labels, so the run warns before anything is trained."""
    import shutil

    import numpy as np

    from PIL import Image

    from conftest import DEMO_TEACHER
    from edgekd.config import build_config
    from edgekd.context import open_run

    names = [f"class{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for j in range(6):
            Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(tmp_path / "imgs" / name / f"{j}.png")
    teacher = tmp_path / "teacher.pt2"
    shutil.copy(DEMO_TEACHER, teacher)
    side = tmp_path / "teacher.edgekd.json"
    for order, warned in ((names, False), (names[::-1], True)):
        side.write_text(json.dumps({"edgekd": {"classes": order}}))
        capsys.readouterr()
        open_run(build_config(model=str(teacher), targets=["x86-cpu"], run_dir=str(tmp_path / f"run{warned}"),
                              data={"path": str(tmp_path / "imgs")}, task="classify"))
        err = capsys.readouterr().err
        assert ("are the model's in another order" in err) is warned, err[-400:]
