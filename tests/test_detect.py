"""The detect task: mAP against hand-built cases, NMS, letterbox box transforms, loss terms with golden values,
COCO/YOLO loading, and one real run (distil → export → INT8 → benchmark) on a small Fashion-MNIST detection set."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import FAST_BENCH
from edgekd.tasks.detection_metrics import (batched_nms, box_iou, coco_map, decode, dense_layout, ground_truth,
                                            nms, xyxy_to_cxcywh)

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "examples" / "fmnist_detector.pt2"


def _dense(boxes_per_image: list[list[tuple[list[float], int, float]]], n: int = 8, c: int = 3) -> np.ndarray:
    """Dense (B, 4 + C, N) outputs holding the given (box xyxy, class, score) at the first locations."""
    out = np.zeros((len(boxes_per_image), 4 + c, n), np.float32)
    out[:, 2:4] = 1.0  # empty locations: 1-px boxes with score 0
    for i, dets in enumerate(boxes_per_image):
        for j, (b, k, s) in enumerate(dets):
            out[i, :4, j] = xyxy_to_cxcywh(np.asarray(b, np.float32))
            out[i, 4 + k, j] = s
    return out


def _truth(boxes_per_image: list[list[tuple[list[float], int]]], m: int = 4) -> np.ndarray:
    y = np.full((len(boxes_per_image), m, 5), -1.0, np.float32)
    for i, objs in enumerate(boxes_per_image):
        for j, (b, k) in enumerate(objs):
            y[i, j] = [k, *b]
    return y


def test_map_known_answers() -> None:
    """One object; a perfect detection gives AP 1 at every IoU; a false positive ranked above it halves the
    precision at every recall (AP 0.5); ranked below it, changes nothing."""
    lay = dense_layout((1, 7, 8), 3)
    gt = _truth([[([10, 10, 30, 30], 0)]])
    info = {"score_threshold": 0.001}
    perfect = decode(_dense([[([10, 10, 30, 30], 0, 0.9)]]), lay, **info)
    assert coco_map(perfect, ground_truth(gt), 3)["map"] == pytest.approx(1.0)
    fp_first = decode(_dense([[([10, 10, 30, 30], 0, 0.9), ([50, 50, 70, 70], 0, 0.95)]]), lay, **info)
    assert coco_map(fp_first, ground_truth(gt), 3)["map"] == pytest.approx(0.5)
    fp_last = decode(_dense([[([10, 10, 30, 30], 0, 0.9), ([50, 50, 70, 70], 0, 0.5)]]), lay, **info)
    assert coco_map(fp_last, ground_truth(gt), 3)["map"] == pytest.approx(1.0)
    # a box of IoU 0.64 with the object counts at thresholds .50–.60 only: 3 of 10 → 0.3
    shifted = decode(_dense([[([10, 10, 30, 30 + 20 * (1 / 0.64 - 1)], 0, 0.9)]]), lay, **info)
    iou = box_iou(np.array([[10, 10, 30, 30 + 20 * (1 / 0.64 - 1)]]), np.array([[10, 10, 30, 30]]))[0, 0]
    assert iou == pytest.approx(0.64)
    assert coco_map(shifted, ground_truth(gt), 3)["map"] == pytest.approx(0.3)
    # the wrong class finds nothing
    wrong = decode(_dense([[([10, 10, 30, 30], 1, 0.9)]]), lay, **info)
    assert coco_map(wrong, ground_truth(gt), 3)["map"] == pytest.approx(0.0)


def _ap50_by_hand(dets, truth, num_classes: int) -> float:
    """AP@.5 computed independently of pycocotools: greedy matching by score, 101-point interpolated precision
    (COCO's definition), mean over classes present in the ground truth."""
    aps = []
    for c in range(num_classes):
        n_gt = sum(int((g[1] == c).sum()) for g in truth)
        if not n_gt:
            continue
        rows = []
        for i, (b, s, k) in enumerate(dets):
            for j in np.flatnonzero(k == c):
                rows.append((s[j], i, b[j]))
        rows.sort(key=lambda r: -r[0])
        used = [np.zeros(int((g[1] == c).sum()), bool) for g in truth]
        tp = []
        for _, i, b in rows:
            g = truth[i][0][truth[i][1] == c]
            hit = False
            if len(g):
                iou = box_iou(b[None], g)[0]
                iou[used[i]] = -1
                j = int(iou.argmax())
                if iou[j] >= 0.5:
                    used[i][j] = hit = True
            tp.append(hit)
        tp_c = np.cumsum(tp)
        rec = tp_c / n_gt
        prec = tp_c / np.arange(1, len(tp) + 1)
        prec = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
        ap = 0.0
        for r in np.linspace(0, 1, 101):
            k = np.searchsorted(rec, r, side="left")
            ap += prec[k] if k < len(prec) else 0.0
        aps.append(ap / 101)
    return float(np.mean(aps))


def test_map50_matches_an_independent_implementation() -> None:
    rng = np.random.default_rng(0)
    truth_rows, det_rows = [], []
    for _ in range(12):
        objs = []
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(10, 30, 2)
            objs.append(([x, y, x + w, y + h], int(rng.integers(3))))
        truth_rows.append(objs)
        dets = []
        for b, k in objs:  # jittered copies (some miss IoU .5), some with the wrong class, and a few strays
            j = np.asarray(b) + rng.normal(0, 4, 4)
            dets.append((list(j), k if rng.random() > 0.2 else (k + 1) % 3, float(rng.uniform(0.3, 1))))
        for _ in range(2):
            x, y = rng.uniform(0, 60, 2)
            dets.append(([x, y, x + 15, y + 15], int(rng.integers(3)), float(rng.uniform(0, 0.8))))
        det_rows.append(dets)
    lay = dense_layout((1, 7, 8), 3)
    dets = decode(_dense(det_rows), lay, score_threshold=0.001, iou_threshold=1.0)  # keep every box
    truth = ground_truth(_truth(truth_rows))
    got = coco_map(dets, truth, 3)["map50"]
    assert 0.2 < got < 0.95
    assert got == pytest.approx(_ap50_by_hand(dets, truth, 3), abs=1e-9)


def test_nms_keeps_the_best_of_overlapping_boxes_per_class() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]  # IoU(0, 1) = 81/119 = 0.68 > 0.5; box 3 = box 0
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2]
    assert nms(boxes, scores, 0.5, max_keep=1).tolist() == [0]
    assert batched_nms(boxes, scores, np.array([0, 0, 0, 1]), 0.5).tolist() == [0, 2, 3]  # another class survives


def test_class_aware_nms_equals_one_greedy_pass_over_every_box() -> None:
    """Per-class NMS merged by score equals the textbook definition written out here: one greedy pass over all boxes
    in score order (ties in input order), a box suppressed by a kept box of its own class with IoU > threshold, stop
    at max_keep — on random crowded scenes with tied scores."""
    rng = np.random.default_rng(0)
    for t in range(60):
        k = int(rng.integers(1, 120))
        xy = rng.random((k, 2)) * 60
        boxes = np.concatenate([xy, xy + rng.random((k, 2)) * 30 + 1], 1)
        scores = np.round(rng.random(k), 1)  # ties
        classes = rng.integers(0, 4, k)
        max_keep = [None, 3, 20][t % 3]
        want: list[int] = []
        for i in sorted(range(k), key=lambda i: (-scores[i], i)):
            if max_keep is not None and len(want) >= max_keep:
                break
            a = boxes[i]
            if all(classes[j] != classes[i] or _iou(a, boxes[j]) <= 0.5 for j in want):
                want.append(i)
        assert batched_nms(boxes, scores, classes, 0.5, max_keep).tolist() == want


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_letterbox_moves_boxes_with_the_pixels() -> None:
    from PIL import Image

    from edgekd.data.detection import letterbox, transform_boxes

    img = np.zeros((50, 100), np.uint8)
    img[10:30, 20:60] = 255  # box x 20..60, y 10..30
    out, s, px, py = letterbox(Image.fromarray(img), (96, 96))
    assert s == pytest.approx(0.96) and px == 0 and py == 24
    arr = np.asarray(out)
    ys, xs = np.nonzero(arr > 128)
    got = transform_boxes(np.array([[20, 10, 60, 30]]), s, px, py)[0]
    assert got == pytest.approx([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], abs=1.0)
    assert arr[0, 0] == 114 and arr[95, 95] == 114  # grey padding above and below


def test_detection_loss_terms_golden_values() -> None:
    from edgekd.kd.detection_losses import FCOSLoss, giou, quality_focal_bce

    a, b = torch.tensor([0.0, 0, 2, 2]), torch.tensor([1.0, 1, 3, 3])
    assert float(giou(a, b)) == pytest.approx(1 / 7 - 2 / 9, abs=1e-6)  # IoU 1/7; hull 9, union 7
    assert float(giou(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(quality_focal_bce(torch.tensor(0.5), torch.tensor(1.0))) == pytest.approx(0.25 * math.log(2), abs=1e-5)
    assert float(quality_focal_bce(torch.tensor(0.3), torch.tensor(0.3))) == pytest.approx(0.0, abs=1e-9)
    # FCOS assignment: a 20-px object centred at (28, 28) on a 96×96 input lands on stride-8 locations within
    # 1.5 strides of its centre: x, y ∈ {20, 28, 36} → 9 positives; a 60-px object goes to stride 16
    loss = FCOSLoss([8, 16], (96, 96), {"channels_first": True})
    y = torch.full((1, 2, 5), -1.0)
    y[0, 0] = torch.tensor([2.0, 18, 18, 38, 38])
    idx, pos = loss.assign(y)
    assert int(pos.sum()) == 9 and bool(pos[0, :144].sum() == 9)
    y[0, 1] = torch.tensor([1.0, 20, 20, 80, 80])
    idx, pos = loss.assign(y)
    assert int(pos[0, 144:].sum()) > 0 and set(idx[0, 144:][pos[0, 144:]].tolist()) == {1}


def _write_yolo(root: Path) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(6):
        img = np.zeros((40, 80), np.uint8)
        img[5:25, 10 + i : 30 + i] = 200
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        cx, cy, w, h = (20 + i) / 80, 15 / 40, 20 / 80, 20 / 40
        (root / "labels" / f"{i}.txt").write_text(f"{i % 2} {cx} {cy} {w} {h}\n")
    (root / "classes.txt").write_text("a\nb\n")


def test_yolo_and_coco_layouts_load_to_the_same_targets(tmp_path: Path) -> None:
    from edgekd.data.detection import load_detection

    _write_yolo(tmp_path / "yolo")
    ds = load_detection(tmp_path / "yolo", channels=1, size=(64, 64), seed=0)
    assert ds.meta["classes"] == ["a", "b"] and ds.meta["format"] == "detection-yolo"
    # 80×40 → scale 0.8, pad_y 16: image i's box x 10+i..30+i → 8+0.8i..24+0.8i, y 5..25 → 20..36
    every = np.concatenate([ds.train.y, ds.val.y, ds.test.y])
    xs = sorted(float(r[1]) for r in every[:, 0])
    assert xs == pytest.approx([8 + 0.8 * i for i in range(6)], abs=1e-4)
    assert every[:, 0, 2].tolist() == pytest.approx([20.0] * 6) and every[:, 0, 4].tolist() == pytest.approx([36.0] * 6)
    coco = tmp_path / "coco"
    (coco / "images").mkdir(parents=True)
    doc = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "a"}, {"id": 9, "name": "b"}]}
    for i in range(6):
        (tmp_path / "yolo" / "images" / f"{i}.png").rename(coco / "images" / f"{i}.png")
        doc["images"].append({"id": i, "file_name": f"{i}.png"})
        doc["annotations"].append({"id": i + 1, "image_id": i, "category_id": [7, 9][i % 2], "bbox": [10 + i, 5, 20, 20]})
    (coco / "annotations.json").write_text(json.dumps(doc))
    dc = load_detection(coco, channels=1, size=(64, 64), seed=0)
    assert dc.meta["category_ids"] == [7, 9]
    assert np.allclose(np.concatenate([dc.train.y, dc.val.y, dc.test.y]), every, atol=1e-4)


def test_auto_task_picks_detect_for_dense_outputs_and_box_data(tmp_path: Path) -> None:
    from edgekd.tasks.auto import choose_task

    _write_yolo(tmp_path / "yolo")
    assert choose_task(torch.zeros(2, 6, 84), str(tmp_path / "yolo"))[0] == "detect"
    assert choose_task(torch.zeros(2, 6, 84), None)[0] == "outputs"


def test_float_tail_keeps_the_decoder_out_of_int8(tmp_path: Path) -> None:
    """The box decoding and the concatenation of boxes (pixels) with scores (0–1) stay float; a classifier loses
    no node to it."""
    import onnx

    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.models.detector import build_detector
    from edgekd.models.zoo import build_model
    from edgekd.quant.ptq import float_tail

    export_onnx(build_detector("det-xs", 1, 3).eval(), (1, 1, 64, 64), tmp_path / "d.onnx", 17, "legacy")
    g = onnx.load(str(tmp_path / "d.onnx")).graph
    tail = set(float_tail(onnx.load(str(tmp_path / "d.onnx"))))
    ops = {n.op_type for n in g.node if n.name in tail}
    assert {"Concat", "Sigmoid", "Softplus"} <= ops and not ops & {"Conv", "MatMul", "Gemm"}
    last = next(n for n in g.node if g.output[0].name in n.output)
    assert last.name in tail
    export_onnx(build_model("resnet-xs", 1, 10).eval(), (1, 1, 28, 28), tmp_path / "c.onnx", 17, "legacy")
    assert float_tail(onnx.load(str(tmp_path / "c.onnx"))) == []


def test_detector_decodes_every_location_as_fcos_and_exports_a_constant_grid(tmp_path: Path) -> None:
    """The dense output against FCOS's decode written out location by location (p = ((j + ½)·s, (i + ½)·s), box =
    p ∓ softplus(α_s · reg)·s), for both box formats; and the exported graph carries the location grid as a constant:
    no Range (the runtime ``arange`` of each level) and only the Shape ops of the dynamic batch, where a grid computed at
    every call took ~50 Shape/Gather/Range/Expand nodes per level (13 % of an INT8 det-s on ONNX Runtime)."""
    import onnx
    import onnxruntime as ort
    import torch
    import torch.nn.functional as F

    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.models.detector import build_detector

    torch.manual_seed(0)
    x = torch.randn(2, 1, 64, 48)
    for fmt in ("cxcywh", "xyxy"):
        m = build_detector("det-xs", 1, 3, strides=(8, 16), box_format=fmt).eval()
        with torch.no_grad():
            m.scale.copy_(torch.tensor([0.7, 1.3]))
            out = m(x)
            want_b, want_c = [], []
            for level, (f, s) in enumerate(zip(m.features(x), m.strides)):
                h = m.head(f)
                reg, cls = m.reg(h), m.cls(h)
                for i in range(h.shape[2]):
                    for j in range(h.shape[3]):
                        px, py = (j + 0.5) * s, (i + 0.5) * s
                        l, t, r, b = (F.softplus(reg[:, :, i, j] * m.scale[level]) * s).unbind(1)
                        x1, y1, x2, y2 = px - l, py - t, px + r, py + b
                        want_b.append(torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1] if fmt == "cxcywh"
                                                  else [x1, y1, x2, y2], 1))
                        want_c.append(torch.sigmoid(cls[:, :, i, j]))
        want = torch.cat([torch.stack(want_b, 2), torch.stack(want_c, 2)], 1)
        assert out.shape == (2, 4 + 3, 8 * 6 + 4 * 3)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
    path = tmp_path / "d.onnx"
    export_onnx(m, (1, 1, 64, 48), path, 17, "legacy")
    g = onnx.load(str(path)).graph
    ops = [n.op_type for n in g.node]
    # one Shape per flattened head output (the dynamic batch) and one for the FPN's upsampling; 13 Shape, 4 Range,
    # 16 Gather and 30 Unsqueeze nodes before
    assert "Range" not in ops and "Gather" not in ops and ops.count("Shape") <= 5, sorted(set(ops))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]  # batch 2 through the dynamic batch axis
    np.testing.assert_allclose(got, m(x).detach().numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def det_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("det") / "fmnist-det"
    subprocess.run([sys.executable, str(ROOT / "examples" / "make_fmnist_detection.py"), "--out", str(out), "--train",
                    "240", "--test", "80"], check=True, capture_output=True)
    return out


def test_the_example_set_has_grey_noisy_backgrounds_and_boxes_on_visible_pixels(det_data: Path) -> None:
    """The demo set's backgrounds are not exactly black (a detector trained on black canvases learns that 0 means
    background; ``benchmarks/detector_robustness.py``), and every box is tight on pixels brighter than the
    canvas's background (the median of the pixels outside every box)."""
    from PIL import Image

    doc = json.loads((det_data / "train" / "annotations.json").read_text())
    zero_share, levels = [], []
    for img in doc["images"][:40]:
        g = np.asarray(Image.open(det_data / "train" / "images" / img["file_name"]), np.float32)
        boxes = [[int(v) for v in a["bbox"]] for a in doc["annotations"] if a["image_id"] == img["id"]]
        outside = np.ones(g.shape, bool)
        for x0, y0, w, h in boxes:
            outside[y0 : y0 + h, x0 : x0 + w] = False
        bg = float(np.median(g[outside]))
        zero_share.append(float((g == 0).mean()))
        levels.append(bg)
        for x0, y0, w, h in boxes:
            crop = g[y0 : y0 + h, x0 : x0 + w]
            for edge in (crop[0], crop[-1], crop[:, 0], crop[:, -1]):  # tight: each side touches the item
                assert edge.max() > bg + 8, (img["file_name"], (x0, y0, w, h))
    assert np.mean(zero_share) < 0.2 and np.std(levels) > 5  # grey, and not one grey for every canvas


def test_detector_run_reports_map_recomputed_from_the_artifacts(det_data: Path, tmp_path: Path) -> None:
    """A real run on the committed detector; the teacher's and the INT8 student's test mAP in the report equal
    mAP recomputed here from plain ONNX Runtime sessions on the run's artifacts and the test split."""
    from edgekd.runtimes import open_session
    from edgekd.tasks.detection_metrics import score_dense

    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "edgekd.cli", "compress", str(TEACHER), "--data", str(det_data),
                        "--target", "x86-cpu-vnni", "--student", "det-xs", "--epochs", "2", "--batch-size", "32",
                        "--run-dir", str(run), *FAST_BENCH, "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    rows = {(row["model"], row["precision"]): row for row in report["rows"]}
    assert all(row["metric_name"] == "map" and row["top1"] is None for row in report["rows"])
    z = np.load(run / "05-bench" / "eval.npz")
    info = json.loads(str(z["task_info"]))
    assert info["decode"]["box_format"] == "cxcywh" and info["strides"] == [8, 16]
    for (model, prec), path in {("teacher", "fp32"): run / "02-export" / "teacher.onnx",
                                ("student", "int8"): run / "04-lower" / "x86-cpu-vnni" / "model.onnx"}.items():
        out = open_session("onnxruntime", path, {}).infer(z["x"])
        want = score_dense(out, z["y"], info)["map"]
        assert rows[(model, prec)]["metric"] == pytest.approx(want, abs=1e-6), model
    assert rows[("teacher", "fp32")]["metric"] > 0.25
    # the student trained (its val mAP moved) and the INT8 gate passed on the val mAP drop against the fp32 export
    hist = json.loads((run / "01-distill" / "history.json").read_text())
    assert hist[-1]["val_map"] > hist[0]["val_map"] or hist[-1]["loss_total"] < hist[0]["loss_total"]
    cal = json.loads((run / "03-quantize" / "x86-cpu-vnni" / "calibration.json").read_text())
    par = cal["parity_int8_vs_fp32_val"]
    assert cal["float_tail_nodes"] > 10 and 0 <= par["map50_agreement"] <= 1
    assert par["map_drop_points"] == pytest.approx(100 * (par["map_fp32"] - par["map_int8"]))
    assert par["agreement"] == pytest.approx(1 - max(0.0, par["map_drop_points"]) / 100) and par["agreement"] >= 0.99


def split_output_teacher(path: Path) -> Path:
    """The committed detector's weights in a det-m that returns (scores (B, N, C), boxes (B, N, 4)) apart, in that
    order — an SSD/RetinaNet-style export — saved as a .pt2 with the committed file's metadata."""
    import zipfile

    from edgekd.models.detector import build_detector

    meta = json.loads(next(zipfile.ZipFile(TEACHER).read(n) for n in zipfile.ZipFile(TEACHER).namelist()
                           if n.endswith("edgekd.json")))
    meta["edgekd"].pop("output", None)
    m = build_detector("det-m", 1, 10, strides=(8, 16), channels_first=False, parts=["scores", "boxes"]).eval()
    m.load_state_dict(torch.load(ROOT / "examples" / "fmnist_detector.state_dict.pt", weights_only=True))
    ep = torch.export.export(m, (torch.randn(2, 1, 96, 96),), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}})
    torch.export.save(ep, str(path), extra_files={"edgekd.json": json.dumps(meta)})
    return path


def test_a_detector_returning_boxes_and_scores_apart_is_distilled_and_scored(det_data: Path, tmp_path: Path) -> None:
    """A two-output detector (scores, boxes): --task auto picks detect, the teacher's test mAP equals the same
    weights' single-tensor export's on the same images (the outputs split, nothing else), the student returns the
    two outputs under the teacher's names and order, and the report's INT8 mAP equals mAP recomputed from the
    deployed file with a plain ONNX Runtime session."""
    import onnx

    from edgekd.runtimes import open_session
    from edgekd.tasks.detection_metrics import score_dense

    teacher = split_output_teacher(tmp_path / "split_det.pt2")
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "edgekd.cli", "compress", str(teacher), "--data", str(det_data),
                        "--target", "x86-cpu-vnni", "--student", "det-xs", "--epochs", "2", "--batch-size", "32",
                        "--run-dir", str(run), *FAST_BENCH], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "task: detect" in r.stdout + r.stderr
    z = np.load(run / "05-bench" / "eval.npz")
    info = json.loads(str(z["task_info"]))
    assert [p["kind"] for p in info["layout"]["parts"]] == ["scores", "boxes"] and not info["layout"]["channels_first"]
    # the same weights as one dense tensor: the committed detector, exported by the same pipeline code
    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.models.loading import load_model

    lm = load_model(str(TEACHER))
    export_onnx(lm.module, (1, 1, 96, 96), tmp_path / "dense.onnx", 17, "legacy", program=lm.program)
    dense_info = {**info, "layout": dense_layout((1, 14, 180), 10)}
    want_teacher = score_dense(open_session("onnxruntime", tmp_path / "dense.onnx", {}).infer(z["x"]), z["y"], dense_info)["map"]
    report = json.loads((run / "report.json").read_text())
    rows = {(row["model"], row["precision"]): row for row in report["rows"]}
    assert rows[("teacher", "fp32")]["metric"] == pytest.approx(want_teacher, abs=1e-6) and want_teacher > 0.25
    deployed = run / "04-lower" / "x86-cpu-vnni" / "model.onnx"
    g = onnx.load(str(deployed)).graph
    assert [o.name for o in g.output] == ["scores", "boxes"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(deployed), providers=["CPUExecutionProvider"])
    assert [o.shape for o in sess.run(None, {sess.get_inputs()[0].name: z["x"][:3]})] == [(3, 180, 10), (3, 180, 4)]
    got = score_dense(open_session("onnxruntime", deployed, {}).infer(z["x"]), z["y"], info)["map"]
    assert rows[("student", "int8")]["metric"] == pytest.approx(got, abs=1e-6)


def test_an_onnx_teachers_outputs_all_reach_the_task_under_their_names(tmp_path: Path) -> None:
    """An ONNX teacher with two outputs hands both to the task, named as in the graph (before, only the first
    was read: a second output was dropped unseen)."""
    from edgekd.exporters.onnx_export import export_onnx
    from edgekd.models.detector import build_detector
    from edgekd.models.loading import load_model
    from edgekd.tasks import get_task

    m = build_detector("det-xs", 1, 3, strides=(8, 16), channels_first=False, parts=["boxes", "scores"]).eval()
    export_onnx(m, (1, 1, 64, 64), tmp_path / "two.onnx", 17, "legacy", output_names=["bboxes", "cls_scores"])
    lm = load_model(str(tmp_path / "two.onnx"))
    out = lm.module(torch.zeros(2, 1, 64, 64))
    assert isinstance(out, tuple) and out.names == ["bboxes", "cls_scores"]
    with torch.no_grad():
        want = m(torch.zeros(2, 1, 64, 64))
    torch.testing.assert_close(out[1], want[1], atol=1e-5, rtol=1e-5)
    info = get_task("detect").probe(out)
    assert [(p["name"], p["kind"]) for p in info["layout"]["parts"]] == [("bboxes", "boxes"), ("cls_scores", "scores")]
    assert get_task("detect").output_names(info) == ["bboxes", "cls_scores"]
    assert [o["name"] for o in get_task("outputs").probe(out)["outputs"]] == ["bboxes", "cls_scores"]


@pytest.mark.slow  # distillation, QAT and both runtimes end to end (≈1–3 min on 2 cores): `make test-slow`
def test_detector_qat_kd_trains_with_the_detection_loss_and_ships_qdq(det_data: Path, tmp_path: Path) -> None:
    """QAT-KD of a detector (issue #17 §2): the fake-quant student learns from its FP self with the dense detection
    KD, selected on val mAP; every weight moves; the Q/DQ export agrees with torch's fake-quant model on the task's
    agreement; the deployed file is that Q/DQ graph and the report's mAP is recomputed from it."""
    import onnx

    from edgekd.runtimes import open_session
    from edgekd.tasks.detection_metrics import score_dense

    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "edgekd.cli", "compress", str(TEACHER), "--data", str(det_data),
                        "--target", "x86-cpu-vnni", "--student", "det-xs", "--epochs", "1", "--batch-size", "32",
                        "--qat", "kd", "--set", "quantize.qat_steps=40", "--set", "quantize.qat_batch_size=16",
                        "--run-dir", str(run), "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    qat = json.loads((run / "03-quantize" / "qat" / "qat.json").read_text())
    tr = qat["training"]
    assert tr["val_metric"] == "map" and "val_map" in tr["curve"][-1] and 0 <= tr["final_val_map"] <= 1
    assert tr["weights_changed"] > 0.9 * tr["total_params"], (tr["weights_changed"], tr["total_params"])
    losses = [c["loss_task"] for c in tr["curve"] if "loss_task" in c]
    assert losses and all(math.isfinite(v) for v in losses)
    ref = qat["parity_vs_torch_fakequant_test"]["onnxruntime-reference"]
    assert ref["agreement"] >= 0.995, ref
    deployed = run / "04-lower" / "x86-cpu-vnni" / "model.onnx"
    ops = {n.op_type for n in onnx.load(str(deployed)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    z = np.load(run / "05-bench" / "eval.npz")
    info = json.loads(str(z["task_info"]))
    rows = {(row["model"], row["precision"]): row for row in json.loads((run / "report.json").read_text())["rows"]}
    got = score_dense(open_session("onnxruntime", deployed, {}).infer(z["x"]), z["y"], info)["map"]
    assert rows[("student", "int8")]["metric"] == pytest.approx(got, abs=1e-6)


def test_teacher_intervention_on_a_detector_is_refused_in_one_line(det_data: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edgekd.cli", "compress", str(TEACHER), "--data", str(det_data),
                        "--qat", "ti", "--run-dir", str(tmp_path / "run"), "--quiet"], capture_output=True, text=True)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error")]
    assert r.returncode == 2 and len(lines) == 1 and "Teacher Intervention" in lines[0] and "--qat kd" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_detect_int8_gate_is_the_val_map_drop() -> None:
    from edgekd.config import QuantizeConfig
    from edgekd.tasks import get_task

    task = get_task("detect")
    lay = dense_layout((1, 7, 8), 3)
    info = {"layout": lay, "num_classes": 3, "decode": {"scores": "probabilities", "box_format": "cxcywh"}}
    targets = np.full((1, 2, 5), -1.0, np.float32)
    targets[0, 0] = [1, 10, 10, 30, 30]
    ref = np.zeros((1, 7, 8), np.float32)
    ref[0, :4, 0] = [20, 20, 20, 20]
    ref[0, 4 + 1, 0] = 0.9  # one right box
    got = ref.copy()
    got[0, :4, 0] = [40, 40, 20, 20]  # the INT8 model moved it off the object
    par = task.parity(ref, got, info, targets=targets)
    assert par["map_fp32"] > 0.9 and par["map_int8"] == 0.0
    assert par["agreement"] == pytest.approx(1 - par["map_fp32"]) and par["agreement"] < task.int8_gate(QuantizeConfig())
    assert task.int8_gate(QuantizeConfig(max_map_drop=2.5)) == pytest.approx(0.975)
    assert "map_drop_points" not in task.parity(ref, got, info)  # without targets: agreement only


def test_detector_feature_kd_imitates_the_teachers_neck(det_data: Path, tmp_path: Path) -> None:
    """Feature imitation on neck features chosen by module path (issue #17 §2): the student's FPN levels learn the
    teacher's through a 1×1 adapter — the feature loss falls, every student weight moves, the teacher is untouched."""
    import torch

    from edgekd import api
    from edgekd.models.loading import load_model

    before = {k: v.clone() for k, v in load_model(str(TEACHER)).module.state_dict().items()}
    run = tmp_path / "run"
    api.distill(TEACHER, run_dir=run, data={"path": str(det_data)}, targets=["x86-cpu-vnni"], task="detect",
                distill={"student": "det-xs", "epochs": 3, "batch_size": 32, "seed": 0,
                         "features": [{"student": "lateral.0", "teacher": "lateral.0"},
                                      {"student": "lateral.1", "teacher": "lateral.1"}]})
    hist = json.loads((run / "01-distill" / "history.json").read_text())
    epochs = hist["history"] if isinstance(hist, dict) else hist
    feat = [e["loss_feature"] for e in epochs]
    assert len(feat) == 3 and feat[-1] < 0.8 * feat[0], feat
    # the student itself trained, not only the adapters: its weights differ from a fresh det-xs of the same seed
    from edgekd.models.detector import build_detector

    student = torch.load(run / "01-distill" / "student.pt", weights_only=True)["state_dict"]
    torch.manual_seed(0)
    fresh = build_detector("det-xs", 1, 10, strides=(8, 16)).state_dict()
    weights = [k for k, v in fresh.items() if v.dtype.is_floating_point and "running" not in k]
    moved = [k for k in weights if not torch.equal(student[k], fresh[k])]
    assert len(moved) > 0.9 * len(weights), (len(moved), len(weights))
    after = load_model(str(TEACHER)).module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_distillation_augmentation_moves_boxes_with_their_pixels() -> None:
    """The shift and flip of the detect task's training batches move every box exactly as its pixels moved (the box
    of the bright pixels after augmentation is the augmented box), padding rows stay padding, and the images are
    those the classification augmentation makes from the same random draws."""
    from edgekd.kd.augment import augment_batch, augment_detection_batch

    x = torch.zeros(16, 1, 40, 48)
    boxes = []
    rng = np.random.default_rng(0)
    for i in range(16):
        # off the border (edge padding would stretch a bordering object); some boxes are cut by the shift
        x1, y1 = int(rng.integers(1, 30)), int(rng.integers(1, 22))
        x2, y2 = min(47, x1 + int(rng.integers(4, 18))), min(39, y1 + int(rng.integers(4, 18)))
        x[i, 0, y1:y2, x1:x2] = 1.0
        boxes.append([float(i % 3), x1, y1, x2, y2])
    y = torch.full((16, 3, 5), -1.0)
    y[:, 0] = torch.tensor(boxes)
    for seed in range(5):
        np.random.seed(seed)
        xa, ya = augment_detection_batch(x, y, pad=3)
        np.random.seed(seed)
        assert torch.equal(xa, augment_batch(x, pad=3))
        assert torch.equal(ya[:, 1:], y[:, 1:]) and torch.equal(ya[:, 0, 0], y[:, 0, 0])
        for i in range(16):
            rows, cols = np.nonzero(xa[i, 0].numpy() > 0.5)
            seen = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert ya[i, 0, 1:].tolist() == pytest.approx(seen, abs=1e-6), (seed, i)


def test_detector_distillation_learns_boxes_from_labels_and_scores_from_the_teacher() -> None:
    """The detect task's objective: with labels (the default) the ground-truth term and the class-score KD, no box
    KD; without labels (ce_weight 0), or when no FCOS stride set fits, the teacher's boxes are the box signal; each
    weight can be set, and a loss parameter the detection loss does not have is refused in one line."""
    from edgekd.config import DistillConfig
    from edgekd.errors import ConfigError
    from edgekd.tasks import get_task

    task = get_task("detect")
    info = {"strides": [8, 16], "image_hw": [96, 96], "layout": {"channels_first": True}, "decode": {}}
    cfg, loss = task.distill_objective(DistillConfig(), info)
    assert (loss.gt is not None, loss.gt_weight, loss.cls_weight, loss.box_weight) == (True, 1.0, 1.0, 0.0)
    assert (cfg.augment, cfg.ce_weight, cfg.optimizer) == (True, 0.0, "adamw")  # ce_weight 0: no classifier CE on top
    _, loss = task.distill_objective(DistillConfig(ce_weight=0.0), info)
    assert (loss.gt, loss.box_weight) == (None, 2.0)
    _, loss = task.distill_objective(DistillConfig(), {**info, "strides": None})
    assert (loss.gt, loss.box_weight) == (None, 2.0)
    _, loss = task.distill_objective(DistillConfig(ce_weight=2.0, loss_params={"box_weight": 0.5, "cls_weight": 0.0}), info)
    assert (loss.gt_weight, loss.cls_weight, loss.box_weight) == (2.0, 0.0, 0.5)
    with pytest.raises(ConfigError, match="temperature"):
        task.distill_objective(DistillConfig(loss_params={"temperature": 4.0}), info)
    # the run's early config check lets a detector's loss parameters through (task detect or auto), not a classifier's
    from edgekd.config import build_config
    from edgekd.context import validate_config

    for t in ("detect", "auto"):
        validate_config(build_config(model="m.pt2", task=t, distill={"loss_params": {"box_weight": 1.0}}))
    with pytest.raises(ConfigError, match="box_weight"):
        validate_config(build_config(model="m.pt2", task="classify", distill={"loss_params": {"box_weight": 1.0}}))
    # the weights are the loss's: a student equal to the teacher has zero KD loss, its GT loss is the FCOS loss
    torch.manual_seed(0)
    out = torch.cat([torch.rand(2, 2, 180) * 40 + 20, torch.rand(2, 2, 180) * 10 + 5, torch.rand(2, 10, 180)], 1)
    y = torch.tensor([[[1.0, 10, 10, 30, 40]], [[3.0, 50, 20, 80, 60]]])
    _, loss = task.distill_objective(DistillConfig(), info)
    assert float(loss(out, out, y)) == pytest.approx(float(loss.gt(out, y)), rel=1e-6)
    other = out.clone()
    other[:, 4:] = other[:, 4:].flip(-1)  # other class scores: the class KD adds; other boxes would not
    other_boxes = out.clone()
    other_boxes[:, :4] = other_boxes[:, :4].flip(-1)
    assert float(loss(other, out, y)) > float(loss.gt(other, y)) + 1e-3
    assert float(loss(other_boxes, out, y)) == pytest.approx(float(loss.gt(other_boxes, y)), rel=1e-6)


def test_a_detectors_tensorrt_bundle_states_its_expected_map(det_data: Path, tmp_path: Path) -> None:
    """A Jetson target for a detector (no TensorRT here): the bundle's expected accuracy is mAP on ONNX Runtime's
    reference kernels, equal to mAP recomputed here from the bundle's own models and samples (which carry the float
    box targets and the decoding the torch-free scorer needs); the report row states mAP, never a top-1."""
    from edgekd.runtimes import open_session
    from edgekd.tasks.detection_metrics import score_dense

    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "edgekd.cli", "compress", str(TEACHER), "--data", str(det_data),
                        "--target", "jetson-orin-nano", "--student", "det-xs", "--epochs", "1", "--batch-size", "32",
                        "--run-dir", str(run), "--quiet"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    b = run / "04-lower" / "jetson-orin-nano"
    exp = json.loads((b / "manifest.json").read_text())["expected_accuracy"]
    assert exp["metric"] == "map" and "top1" not in exp["fp32"]
    z = np.load(b / "samples.npz")
    info = json.loads(str(z["task_info"]))
    assert info["task"] == "detect" and z["y"].dtype.kind == "f" and z["y"].shape[-1] == 5
    ref = {"graph_optimization": "disable"}
    for prec, model in (("fp32", "model.fp32.onnx"), ("int8", "model.int8.onnx")):
        if prec not in exp:
            continue  # the accuracy half of the gate chose FP16: no INT8 model in the bundle
        want = score_dense(open_session("onnxruntime", b / model, ref).infer(z["x"]), z["y"], info)["map"]
        assert exp[prec]["map"] == pytest.approx(want, abs=1e-6) and exp[prec]["gate_value"] == exp[prec]["map"]
    report = json.loads((run / "report.json").read_text())
    rows = [row for row in report["rows"] if row["target"] == "jetson-orin-nano"]
    assert rows and all(row["metric_name"] == "map" and row["top1"] is None and row["p50_ms"] is None for row in rows)
    assert {row["precision"]: row["metric"] for row in rows} == {k: v["map"] for k, v in exp.items() if isinstance(v, dict)}
