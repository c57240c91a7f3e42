"""Bring your own model (issue #19): what a user's first run costs and reports, on two models shaped like the ones
people bring, run through the CLI exactly as a user would.

    python benchmarks/byom.py [--only resnet18-224 mobilenetv2-64] [--retrain]

- ``resnet18-224``: a ResNet-18 (torchvision's layout: 7×7/2 stem, max-pool, BasicBlocks [2, 2, 2, 2], 11.2 M
  parameters) for 3×224×224 RGB, written here because torchvision does not import with this torch. Trained on the
  real Fashion-MNIST (grey replicated to RGB, stretched from 28 px) for 150 steps at 112 px (lr 0.05) then 40 at 224
  (lr 0.01; batch 32, SGD momentum 0.9, cosine decay in each phase) — enough to be far above chance, so the INT8 gate and the accuracy columns
  mean something; a state of the art teacher is not the point. Saved as ``torch.export`` ``.pt2`` with its
  normalisation in the ``edgekd.json`` extra file. Run: ``edgekd compress --no-distill --target auto`` with 600
  training images (``data.limit``) and 500 test images (``data.eval_limit``), the issue's before-case (1,681 s,
  3.4 GB before, on 600 images).
- ``mobilenetv2-64``: a MobileNetV2-style network (inverted residuals, expansion 6, ReLU6, 224k parameters) for
  3×64×64, trained 2 epochs on 6,000 images; saved as TorchScript *traced at batch 1* with a sidecar
  ``.edgekd.json``. Run: the full ``edgekd compress --target auto --student auto`` (distill 10 epochs on the
  folder's 6,000 training images, export, INT8, bench on its 1,000 test images).

The data is an image folder of the real Fashion-MNIST (28-px PNGs, ``train/<class>/`` and ``test/<class>/``) that
edgekd fits to each model's input (``--resize stretch``), as a user's folder of photos would be. Each run is a fresh
``edgekd`` process; wall time is measured around it and peak memory is the largest resident set of the process and
its workers (``RUSAGE_CHILDREN`` of a wrapper). From each run's ``report.json``: top-1, batch-1 p50 with its 95 % CI,
the speed-up (median of the per-round ratios, their range), the threads measured, and the student chosen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import REPO, md_table, save

WORK = REPO / "runs" / "bench-byom"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
#: the image folder's class subfolders, which sort in class-index order (recorded in the teachers' metadata)
FOLDERS = [f"{i}-{c}" for i, c in enumerate(CLASSES)]
EDGEKD = [sys.executable, "-m", "edgekd.cli"]
#: before this issue's work, measured by the issue's author on the same kind of machine (2 cores)
BEFORE = {"resnet18-224": {"wall_s": 1681, "bench_s": 1361, "peak_rss_mb": 3400}}


def image_folder(n_train: int = 6000, n_test: int = 1000) -> Path:
    """The real Fashion-MNIST as a folder of 28-px RGB PNGs, seeded subset, one subfolder per class."""
    import numpy as np
    from PIL import Image

    from edgekd.data.datasets import load_idx_folder, resolve_data_path

    root = WORK / "fmnist-rgb"
    if (root / "done").exists():
        return root
    x, y, xt, yt = load_idx_folder(resolve_data_path("fashion-mnist"))
    rng = np.random.default_rng(0)
    for split, xs, ys, n in (("train", x, y, n_train), ("test", xt, yt, n_test)):
        for j, i in enumerate(rng.choice(len(xs), n, replace=False)):
            d = root / split / FOLDERS[int(ys[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(xs[i]).squeeze()).convert("RGB").save(d / f"{j:05d}.png")
    (root / "done").write_text("ok\n")
    return root


def resnet18(num_classes: int = 10):  # noqa: ANN201
    import torch.nn as nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):  # noqa: ANN001, ANN202
            y = self.bn2(self.conv2(self.bn1(self.conv1(x)).relu()))
            return (y + (x if self.down is None else self.down(x))).relu()

    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def mobilenetv2(num_classes: int = 10):  # noqa: ANN201
    import torch.nn as nn

    def cbr(cin: int, cout: int, k: int, s: int, groups: int = 1) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    class InvRes(nn.Module):
        def __init__(self, cin: int, cout: int, s: int, t: int = 6) -> None:
            super().__init__()
            h = cin * t
            self.body = nn.Sequential(cbr(cin, h, 1, 1), cbr(h, h, 3, s, groups=h),
                                      nn.Conv2d(h, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.res = s == 1 and cin == cout

        def forward(self, x):  # noqa: ANN001, ANN202
            return x + self.body(x) if self.res else self.body(x)

    layers: list[nn.Module] = [cbr(3, 16, 3, 2)]
    cin = 16
    for cout, n, s in ((16, 1, 1), (24, 2, 2), (32, 3, 2), (64, 2, 2), (96, 1, 1)):
        for i in range(n):
            layers.append(InvRes(cin, cout, s if i == 0 else 1))
            cin = cout
    layers += [cbr(cin, 320, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(320, num_classes)]
    return nn.Sequential(*layers)


def train(model, folder: Path, schedule: list[tuple[int, int, float]], n: int) -> dict[str, Any]:  # noqa: ANN001
    """SGD (momentum 0.9, cosine lr per phase) on ``n`` training images, ``schedule`` = [(side, steps, lr), ...];
    returns the normalisation used and the test top-1 at the last side. Checks the weights changed (the brief's
    rule)."""
    import numpy as np
    import torch

    from edgekd.data.datasets import load_dataset

    torch.manual_seed(0)
    before = [p.detach().clone() for p in model.parameters()]
    rng = np.random.default_rng(0)
    norm = None
    for side, steps, lr in schedule:
        ds = load_dataset(folder, channels=3, size=(side, side), limit=n, mean=norm and norm["mean"],
                          std=norm and norm["std"])
        norm = norm or {"mean": ds.meta["normalize"]["mean"], "std": ds.meta["normalize"]["std"]}
        x, y = torch.from_numpy(np.asarray(ds.train.x)), torch.from_numpy(ds.train.y).long()
        opt = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        model.train()
        for _ in range(steps):
            i = torch.from_numpy(rng.choice(len(x), 32, replace=False))
            loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            xt, yt = torch.from_numpy(ds.test.x[:500]), torch.from_numpy(ds.test.y[:500]).long()
            top1 = float(torch.cat([model(xt[j:j + 100]).argmax(1) for j in range(0, len(xt), 100)]).eq(yt).float().mean())
        print(f"  trained {steps} steps at {side} px: loss {float(loss.detach()):.3f}, test top-1 {top1:.4f}", flush=True)
    changed = sum(int(not torch.equal(a, b)) for a, b in zip(before, model.parameters()))
    assert changed == len(before), f"only {changed} of {len(before)} parameter tensors changed"
    return {"normalize": norm, "test_top1_500": top1, "schedule": schedule, "train_images": n}


def make_teachers(folder: Path, only: list[str], retrain: bool) -> dict[str, Path]:
    import torch

    out: dict[str, Path] = {}
    if "resnet18-224" in only:
        path = WORK / "resnet18_224.pt2"
        if retrain or not path.exists():
            print("training the ResNet-18 teacher (112 px, then 224 px)", flush=True)
            m = resnet18()
            info = train(m, folder, [(112, 150, 0.05), (224, 40, 0.01)], 6000)
            meta = {"edgekd": {"normalize": info["normalize"], "input_shape": [1, 3, 224, 224],
                               "classes": FOLDERS, "test_top1": info["test_top1_500"]}}
            ep = torch.export.export(m, (torch.zeros(2, 3, 224, 224),),
                                     dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
            torch.export.save(ep, path, extra_files={"edgekd.json": json.dumps(meta)})
            (WORK / "resnet18_224.train.json").write_text(json.dumps(info, indent=1))
        out["resnet18-224"] = path
    if "mobilenetv2-64" in only:
        path = WORK / "mobilenetv2_64.ts"
        if retrain or not path.exists():
            print("training the MobileNetV2-style teacher (64 px)", flush=True)
            m = mobilenetv2()
            info = train(m, folder, [(64, 375, 0.05)], 6000)
            torch.jit.trace(m, torch.zeros(1, 3, 64, 64)).save(str(path))
            meta = {"edgekd": {"normalize": info["normalize"], "input_shape": [1, 3, 64, 64],
                               "classes": FOLDERS, "test_top1": info["test_top1_500"]}}
            path.with_name("mobilenetv2_64.edgekd.json").write_text(json.dumps(meta))
            (WORK / "mobilenetv2_64.train.json").write_text(json.dumps(info, indent=1))
        out["mobilenetv2-64"] = path
    return out


WRAPPER = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); rc = subprocess.call(sys.argv[1:]); "
           "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t, "
           "'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")


def run_cli(args: list[str], log: Path) -> dict[str, Any]:
    """One fresh ``edgekd`` process under a wrapper that reports its wall time and the peak RSS of it and its workers."""
    with log.open("w") as f:
        p = subprocess.run([sys.executable, "-c", WRAPPER, *EDGEKD, *args], stdout=subprocess.PIPE, stderr=f, text=True,
                           cwd=REPO)
    tail = p.stdout.strip().splitlines()
    log.write_text(log.read_text() + "\n".join(tail[:-1]))
    return json.loads(tail[-1])


COMMANDS: dict[str, list[str]] = {
    "resnet18-224": ["--no-distill", "--set", "data.limit=600", "--set", "data.eval_limit=500"],
    "mobilenetv2-64": ["--student", "auto", "--set", "data.limit=6000", "--set", "data.eval_limit=1000",
                       "--set", "distill.epochs=10"],
}


def summarize(name: str, run: Path, measured: dict[str, Any]) -> dict[str, Any]:
    man = json.loads((run / "manifest.json").read_text())
    rep = json.loads((run / "report.json").read_text())
    rows = rep.get("rows", rep if isinstance(rep, list) else [])
    stages = {k: round(v.get("seconds", 0.0), 1) for k, v in man.get("stages", {}).items()}
    choice = run / "01-distill" / "student_choice.json"
    student = json.loads(choice.read_text()) if choice.exists() else None
    out_rows = []
    for r in rows:
        out_rows.append({k: r.get(k) for k in ("target", "backend", "model", "precision", "metric", "p50_ms",
                                                "speedup_vs_teacher_p50", "speedup_range", "threads", "cov",
                                                "p50_ci95_ms", "threads_sweep")})
    return {"model": name, "command": measured["command"], "rc": measured["rc"], "wall_s": measured["wall_s"],
            "peak_rss_mb": measured["peak_rss_mb"], "stage_seconds": stages, "rows": out_rows,
            "student": None if student is None else {k: student[k] for k in ("student", "reason", "speed_goal",
                                                                             "teacher_p50_ms", "seconds")},
            "before": BEFORE.get(name)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=list(COMMANDS))
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--summarize-only", action="store_true", help="re-read the last runs, run nothing")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    folder = image_folder()
    teachers = {} if a.summarize_only else make_teachers(folder, a.only, a.retrain)
    results = []
    for name in a.only:
        run = WORK / f"run-{name}"
        if a.summarize_only:
            results.append(summarize(name, run, json.loads((WORK / f"{name}.measured.json").read_text())))
            continue
        subprocess.run(["rm", "-rf", str(run)], check=True)
        args = ["compress", str(teachers[name].relative_to(REPO)), "--target", "auto", "--data",
                str(folder.relative_to(REPO)), "--run-dir", str(run.relative_to(REPO)), *COMMANDS[name]]
        print(f"{name}: edgekd {' '.join(args)}", flush=True)
        measured = run_cli(args, WORK / f"{name}.log") | {"command": "edgekd " + " ".join(args)}
        print(f"  rc {measured['rc']}, {measured['wall_s']:.0f} s, peak {measured['peak_rss_mb']:.0f} MB", flush=True)
        (WORK / f"{name}.measured.json").write_text(json.dumps(measured))
        results.append(summarize(name, run, measured))
    table = []
    for res in results:
        for r in res["rows"]:
            ci = r["p50_ci95_ms"]
            sp = r["speedup_vs_teacher_p50"]
            rng = r["speedup_range"]
            sw = r.get("threads_sweep") or {}
            table.append([res["model"], r["target"], r["model"], r["precision"], f"{r['metric']:.4f}",
                          f"{r['p50_ms']:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else ""),
                          "–" if sp is None else f"{sp:.2f}×" + (f" ({rng[0]:.2f}–{rng[1]:.2f})" if rng else ""),
                          r["threads"], ", ".join(f"{t}: {v:.3f}" for t, v in sw.get("p50_ms", {}).items()) or "–",
                          sw.get("best_threads", "–")])
    runs = md_table(["model", "wall s", "peak RSS MB", "before (wall s / MB)", "stages s", "student"],
                    [[r["model"], f"{r['wall_s']:.0f}", f"{r['peak_rss_mb']:.0f}",
                      f"{r['before']['wall_s']} / {r['before']['peak_rss_mb']}" if r["before"] else "–",
                      ", ".join(f"{k} {v}" for k, v in r["stage_seconds"].items()),
                      f"`{r['student']['student']}`: {r['student']['reason']}" if r["student"] else "none (--no-distill)"]
                     for r in results])
    # the teachers' own test top-1 when they were trained (this machine's training run, not a remembered figure)
    trained = {name: round(json.loads(f.read_text())["test_top1_500"], 3) for name, f in
               (("resnet18-224", WORK / "resnet18_224.train.json"), ("mobilenetv2-64", WORK / "mobilenetv2_64.train.json"))
               if f.exists()}
    from edgekd.benchmark.envinfo import capture

    env = capture()
    cpu = (f"{env['cpu'].get('model', 'unknown CPU')}, {env['cpu'].get('logical_cores', '?')} logical cores, ISA "
           f"{', '.join(env['cpu'].get('isa', [])) or 'baseline'}")
    md = "\n\n".join([
        "# Bring your own model: cost and numbers of a first run (issue #19)",
        "`python benchmarks/byom.py`. Each model run once through the CLI as a user would (commands in the JSON); "
        "peak memory is the largest resident set among the edgekd process and its workers.",
        runs,
        md_table(["model", "target", "artifact", "precision", "top-1", "p50 ms (95 % CI)", "speed-up (round range)",
                  "threads (profile)", "p50 ms by thread count (one process)", "fastest threads"], table),
        "Top-1 on the folder's test images (500 for the ResNet-18 run, 1,000 for the MobileNetV2 run). Latency: batch 1, "
        "3 alternating rounds, a fresh worker process per artifact and round, each timed loop stopped by the CI rule "
        "(±1 %, ≥ 50 calls and 1 s) or the profile's time budget; the thread-count columns come from the sweep "
        "(every artifact at every count in one process). Teachers: ResNet-18 trained 150 steps at 112 px + 40 at 224 "
        f"(test top-1 {trained.get('resnet18-224', 'not recorded')} on 500 images when saved), MobileNetV2-style 375 "
        f"steps at 64 px ({trained.get('mobilenetv2-64', 'not recorded')}): far above chance (0.10), far from the state "
        "of the art — these rows measure cost and the tool's numbers, not the teachers. Measured on: "
        f"{cpu}.",
    ])
    save("byom", {"results": results, "args": vars(a), "teachers_trained": trained}, md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
