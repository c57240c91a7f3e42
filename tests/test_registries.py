"""Every registered entry of every registry is exercised: stages, backends, device profiles, synthesis presets, zoo
models (losses: tests/test_losses.py). A new entry that nobody tests fails here first (issue #16)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.backends import BACKEND_NAMES, BACKENDS, LowerInputs, get_backend
from edgekd.models.detector import DETECTORS
from edgekd.models.zoo import MODELS, build_model
import edgekd.stages  # noqa: F401 - registers the stages
from edgekd.runner import STAGES
from edgekd.runtimes import open_session
from edgekd.targets import list_profiles


def test_every_stage_is_registered_and_ordered() -> None:
    from types import SimpleNamespace

    from edgekd.config import build_config
    from edgekd.targets import resolve

    assert set(STAGES.names()) == {"synth", "distill", "export", "quantize/qat", "sensitivity", "plan", "quantize", "lower",
                                   "bench"}
    # a stage only ever needs stages that come before it in the data flow (with every optional stage switched on;
    # QAT and the planner exclude each other, so each is switched on in its own config)
    order = ["synth", "distill", "export", "quantize/qat", "sensitivity", "plan", "quantize", "lower", "bench"]
    needed = set()
    for quantize, planned in (({"qat": "kd"}, False), ({"plan": {"max_drop": 1.0}}, True)):
        cfg = build_config(model="m.pt2", targets=["x86-cpu"], quantize=quantize, synth={"mix": True})
        ctx = SimpleNamespace(cfg=cfg, data_free=True, planned=lambda p, planned=planned: planned)
        for name in order:
            for dep, _ in STAGES.get(name).needs(ctx, resolve("x86-cpu")):
                assert order.index(dep) < order.index(name), (name, dep)
                needed.add(dep)
    assert needed == set(order) - {"bench"}  # every stage but the last feeds another
    # sensitivity and plan run end to end in tests/test_planner.py


def _tiny_onnx(path: Path) -> Path:
    from edgekd.exporters.onnx_export import export_onnx

    torch.manual_seed(0)
    export_onnx(build_model("resnet-xs", 1, 10).eval(), (1, 1, 28, 28), path, 17, "legacy")
    return path


@pytest.mark.parametrize("name", BACKEND_NAMES)
def test_every_backend_quantizes_lowers_and_runs(name: str, tmp_path: Path) -> None:
    """Real runtimes: the backend's own PTQ, its lowering, and the shared torch-free session on the result."""
    backend = get_backend(name)
    assert name in BACKENDS and backend.name == name
    profile = next(p for p in list_profiles() if p.backend == name)
    for p in list_profiles():
        if p.backend == name:
            assert "threads" in backend.settings(p)
    fp32 = _tiny_onnx(tmp_path / "fp32.onnx")
    x = np.random.default_rng(0).standard_normal((32, 1, 28, 28)).astype(np.float32)
    q = backend.quantize(fp32, tmp_path, x[:16], profile)
    assert q.files["model"].exists() and q.info["tool"]
    ref = open_session("onnxruntime", fp32, {}).infer(x)
    got = open_session(q.check_backend, q.files["model"], q.check_settings).infer(x)
    assert got.shape == ref.shape and (got.argmax(1) == ref.argmax(1)).mean() > 0.8
    res = backend.lower(q.files["model"], profile, tmp_path / "lowered",
                        LowerInputs(fp32, [1, 1, 28, 28], (x, np.zeros(32, np.int64)), "int8",
                                    score=lambda out: float((out.argmax(1) == 0).mean())))
    assert Path(res["artifact"]).exists()
    if name == "tensorrt":  # no engine here: the bundle, and bench says why with the expected accuracy
        note, rows = backend.unmeasured(profile, res, (x, np.zeros(32)), Path(res["artifact"]))
        assert note and rows[0]["measured_on"].startswith("onnxruntime-reference")
    else:
        session = open_session(name, res["artifact"], backend.settings(profile))
        assert session.infer(x[:4]).shape == (4, 10)
        session.timed(x[:1])()


def test_every_profile_validates_and_names_a_registered_backend() -> None:
    profiles = list_profiles()
    assert len(profiles) >= 12
    for p in profiles:
        assert p.backend in BACKEND_NAMES and get_backend(p.backend)
        assert p.default_precision in p.precisions


@pytest.mark.parametrize("name", sorted(MODELS.names()))
def test_every_zoo_model_builds_and_runs(name: str) -> None:
    from edgekd.models.zoo import input_kind

    m = build_model(name, 1, 10).eval()
    x = torch.zeros(2, 1, 28, 28) if input_kind(name) == "image" else torch.zeros(2, 1, 1024)
    with torch.no_grad():
        assert m(x).shape == (2, 10)
    assert sum(p.numel() for p in m.parameters()) > 1000


@pytest.mark.parametrize("name", sorted(DETECTORS.names()))
def test_every_detector_preset_has_the_teachers_locations_and_exports(name: str, tmp_path: Path) -> None:
    """A det-* student lines up location by location with a teacher of the same strides, whatever its stem: as many
    locations as :func:`anchor_count` (each stride-2 conv rounding up) on sizes that are not multiples of the
    strides, the same location centres (the decoded box of a zero regression is centred on them), and its ONNX export
    (the patch stem's padding included) computes what the module does."""
    import onnxruntime as ort

    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.models.detector import anchor_count, build_detector

    torch.manual_seed(0)
    for h, w in ((64, 64), (50, 37)):
        m = build_detector(name, 1, 3, strides=(8, 16)).eval()
        ref = build_detector("det-m", 1, 3, strides=(8, 16)).eval()
        for net in (m, ref):
            torch.nn.init.zeros_(net.reg.weight)
        x = torch.rand(2, 1, h, w)
        with torch.no_grad():
            out, want = m(x), ref(x)
        assert out.shape == want.shape == (2, 4 + 3, anchor_count((8, 16), h, w))
        torch.testing.assert_close(out[:, :2], want[:, :2])  # box centres = location centres when reg = 0
    path = tmp_path / "d.onnx"
    export_onnx(m, (1, 1, 50, 37), path, 17, "legacy")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
    np.testing.assert_allclose(got, m(x[:1]).detach().numpy(), atol=1e-4)


def test_every_synth_preset_makes_images() -> None:
    from edgekd.config import SYNTH_METHODS
    from edgekd.data.synth import synthesize
    from edgekd.data.synth.presets import PRESETS

    assert tuple(PRESETS.names()) == SYNTH_METHODS
    torch.manual_seed(0)
    teacher = build_model("resnet-xs", 1, 10).eval()
    for name in SYNTH_METHODS:
        res = synthesize(teacher, 8, (1, 28, 28), 10, method=name, seed=0, iterations=2, batch_size=8)
        assert res.x.shape == (8, 1, 28, 28) and np.isfinite(res.x).all(), name
        assert res.meta["method"] == name


def test_every_task_probes_scores_and_agrees() -> None:
    """Golden values by hand: top-1 of three samples, agreement of two output sets, the probe's class count."""
    from edgekd.config import TASK_NAMES
    from edgekd.errors import ModelLoadError
    from edgekd.tasks import TASK_NAMES as REGISTERED, get_task

    assert TASK_NAMES == REGISTERED
    t = get_task("classify")
    assert t.primary == "top1" and t.output_names({"num_classes": 10}) == ["logits"]
    assert t.probe(torch.zeros(2, 7)) == {"num_classes": 7}
    with pytest.raises(ModelLoadError, match="not \\(batch, classes\\)"):
        t.probe(torch.zeros(2, 3, 4))
    z = np.array([[2.0, 1, 0], [0, 3, 1], [0, 1, 5]])
    assert t.score(z, np.array([0, 1, 1])) == {"samples": 3, "top1": 2 / 3}
    assert t.agreement(z, z[[0, 2, 1]]) == pytest.approx(1 / 3)
