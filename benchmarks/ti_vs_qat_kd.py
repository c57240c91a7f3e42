"""Teacher Intervention vs plain QAT-KD where QAT converges slowly (issue #14 §4), on real Fashion-MNIST.

    python benchmarks/ti_vs_qat_kd.py                         # every arm, 5 paired seeds, lr 1e-4 and 5e-4
    python benchmarks/ti_vs_qat_kd.py --arms vit-ternary --seeds 0 1
    python benchmarks/ti_vs_qat_kd.py --report-only           # re-render from results/ti_vs_qat_kd.partial.json
    python benchmarks/ti_vs_qat_kd.py --name ti_smoke --arms cnn-ternary --seeds 0 --steps 20   # a quick check

Protocol (the paper's setting scaled to a CPU: few images, low precision, the paper's losses and optimiser):
- the FP teacher is quantized into its own student (every Conv/Linear and attention matmul fake-quantized; first and
  last layers 8-bit); ternary weights use one scale per layer (TernaryBERT's TWN), W4A4 is LSQ at 4 bits;
- a fixed 4,000-image training subset, batch 32, ``--steps`` steps; TI spends the first 15 % in step 1 (TI-G: O → C →
  M; CNNs: block reconstruction TI-BR, and the residual-branch TI-RG, RO → RM) and the rest in plain QAT-KD with a
  fresh optimiser and schedule, so every variant gets the same number of steps;
- every variant trains with the TI paper's loss set (soft CE at T = 1 + MSE on every hidden state including the
  embedding output + attention scores + attention sub-layer outputs), AdamW (weight decay 0.01 on weights, none on
  biases, norms and quantizer steps), linear warm-up over 10 % then linear decay, at each of ``--lrs``;
- val top-1 on the 5,000 fixed val images (not the test set) every 10 steps up to step 200 — all of step 1 and the
  start of step 2, where convergence speed shows — then every 50 (evaluating 5,000 images every 10 steps for all
  600 would cost 5–10 s each, more than the training); final top-1 on the 10k test images;
  per-block MSE to the teacher after step 1 and at the end (512 val images, the student's own path).
Reported per arm and learning rate: test top-1 (mean ± sd over seeds), steps for each TI seed to reach the same
seed's final QAT-KD val top-1, mean val top-1 over the first 100 steps of step 2, per-block MSE. The goal (the
paper's direction): TI reaches QAT-KD's final accuracy in ≤ ¼ of its steps and ends at least level, on at least one
transformer arm. Runs are stored one by one, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from _common import REPO, RESULTS, md_table, save

from edgekd.benchmark.envinfo import capture
from edgekd.data import ArraySplit, Dataset, load_dataset
from edgekd.fileio import read_json, write_json
from edgekd.kd.trainer import accuracy, predict_logits
from edgekd.models.loading import load_model
from edgekd.quant.qat import QATConfig, parse_bits, quantized_copy
from edgekd.quant.qat_train import QATTrainConfig, train_qat

MEAN, STD = [0.2860], [0.3530]
LABEL = {"kd": "QAT-KD", "g": "TI-G", "br": "TI-BR (block reconstruction)", "rg": "TI-RG (residual branch)"}


@dataclass(frozen=True)
class Arm:
    weights: str
    arch: str
    bits: str
    variants: tuple[str, ...]


ARMS = {
    "vit-ternary": Arm("examples/fmnist_vit_teacher.state_dict.pt", "vit-tiny", "ternary", ("kd", "g")),
    "vit-w4a4": Arm("examples/fmnist_vit_teacher.state_dict.pt", "vit-tiny", "w4a4", ("kd", "g")),
    "vit6-ternary": Arm("examples/fmnist_vit_d6_teacher.state_dict.pt", "vit-tiny-d6", "ternary", ("kd", "g")),
    "cnn-ternary": Arm("examples/fmnist_teacher.state_dict.pt", "resnet-l", "ternary", ("kd", "br", "rg")),
}


def subset(data: Dataset, n: int) -> Dataset:
    return Dataset(ArraySplit(data.train.x[:n], data.train.y[:n]), data.val, data.test, data.num_classes, meta={})


def run_one(arm: Arm, variant: str, lr: float, seed: int, data: Dataset, a: argparse.Namespace) -> dict[str, Any]:
    teacher = load_model(REPO / arm.weights, arch=arm.arch).module  # a fresh teacher object for every run
    torch.manual_seed(seed)
    student, _ = quantized_copy(teacher, QATConfig(**parse_bits(arm.bits), ternary_scale="layer"))
    cfg = QATTrainConfig(steps=a.steps, batch_size=a.batch, lr=lr, weight_decay=0.01, ti="none" if variant == "kd" else variant,
                         ti_steps=max(1, int(a.ti_frac * a.steps)), loss_set="ternarybert", schedule="linear",
                         warmup_fraction=0.1, eval_every=a.eval_every, eval_dense_until=a.eval_dense_until,
                         eval_samples=a.eval_images, seed=seed)
    t0 = time.time()
    res = train_qat(teacher, student, data, cfg)
    if res["trainable_params"] != res["total_params"] or res["weights_changed"] < 0.9 * res["total_params"]:
        raise RuntimeError(f"the student did not train: {res['weights_changed']} of {res['total_params']} parameters changed")
    return {"curve": [{"step": c["step"], "val_top1": c["val_top1"]} for c in res["curve"]],
            "test_top1": accuracy(predict_logits(student, data.test.x), data.test.y),
            "block_mse": res["block_mse"], "block_mse_after_step1": res["block_mse_after_step1"], "ti_steps": res["ti_steps"],
            "weights_changed": res["weights_changed"], "total_params": res["total_params"], "seconds": round(time.time() - t0, 1),
            "threads": a.threads}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 5e-4])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--ti-frac", type=float, default=0.15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--train-images", type=int, default=4000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-dense-until", type=int, default=200,
                    help="val top-1 every 10 steps up to this step (step 1 and the start of step 2), then every --eval-every")
    ap.add_argument("--eval-images", type=int, default=5000)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the per-run seconds are recorded with it)")
    ap.add_argument("--name", default="ti_vs_qat_kd", help="results/NAME.{json,md}, NAME.partial.json, NAME_curves.png")
    a = ap.parse_args()
    partial = RESULTS / f"{a.name}.partial.json"
    res: dict[str, Any] = read_json(partial) if partial.exists() else {}
    if not a.report_only:
        torch.set_num_threads(a.threads)
        data = subset(load_dataset("fashion-mnist", mean=MEAN, std=STD), a.train_images)
        for name in a.arms:
            arm = ARMS[name]
            if f"{name}/fp32_test_top1" not in res:
                fp = load_model(REPO / arm.weights, arch=arm.arch).module
                res[f"{name}/fp32_test_top1"] = accuracy(predict_logits(fp, data.test.x), data.test.y)
            for seed in a.seeds:  # seeds outermost: a partial benchmark has complete, paired seeds
                for lr in a.lrs:
                    for v in arm.variants:
                        key = f"{name}/lr{lr:g}/{v}/s{seed}"
                        if key in res:
                            continue
                        res[key] = run_one(arm, v, lr, seed, data, a)
                        res.setdefault("environment", capture())
                        write_json(partial, res)
                        print(key, f"test {res[key]['test_top1']:.4f}", f"{res[key]['seconds']:.0f}s", flush=True)
    report(res, a)


def steps_to_reach(curve: list[dict[str, Any]], target: float) -> int | None:
    return next((c["step"] for c in curve if c["val_top1"] >= target), None)


def early_step2(curve: list[dict[str, Any]], s1: int, width: int = 100) -> float:
    pts = [c["val_top1"] for c in curve if s1 < c["step"] <= s1 + width]
    return statistics.mean(pts) if pts else float("nan")


def _ms(v: list[float], scale: float = 100) -> str:
    if not v:
        return "–"
    return f"{scale * statistics.mean(v):.2f} ± {scale * statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"


def seeds_in(res: dict[str, Any], name: str, lr: float) -> list[int]:
    """Every seed with a stored run of this arm and learning rate (a report covers all of them, whatever the
    invocation that renders it ran)."""
    prefix = f"{name}/lr{lr:g}/"
    return sorted({int(k.rsplit("/s", 1)[1]) for k in res if k.startswith(prefix)})


def sections_in(res: dict[str, Any]) -> list[tuple[str, float]]:
    """Every (arm, learning rate) with a stored run, arms in ``ARMS`` order: the report renders all of them, whichever
    arms and rates the invocation that renders it ran (arms are run in separate invocations on a 2-core machine)."""
    found = {(k.split("/")[0], float(k.split("/")[1][2:])) for k in res if k.count("/") == 3 and k.split("/")[0] in ARMS}
    return sorted(found, key=lambda t: (list(ARMS).index(t[0]), t[1]))


def summarize(res: dict[str, Any], name: str, lr: float, seeds: list[int]) -> dict[str, Any]:
    arm = ARMS[name]
    runs = {v: {s: res[f"{name}/lr{lr:g}/{v}/s{s}"] for s in seeds if f"{name}/lr{lr:g}/{v}/s{s}" in res} for v in arm.variants}
    paired = sorted(set.intersection(*(set(r) for r in runs.values()))) if runs else []
    out: dict[str, Any] = {"seeds": paired, "variants": {}}
    if not paired:
        return out
    kd_final = {s: runs["kd"][s]["curve"][-1]["val_top1"] for s in paired}
    for v in arm.variants:
        rs = [runs[v][s] for s in paired]
        s1 = rs[0]["ti_steps"] if v != "kd" else next((r["ti_steps"] for x in arm.variants if x != "kd"
                                                      for r in [runs[x][paired[0]]]), 0)
        reach = [steps_to_reach(runs[v][s]["curve"], kd_final[s]) for s in paired]
        blocks = list(rs[0]["block_mse"])
        out["variants"][v] = {
            "test_top1": [r["test_top1"] for r in rs], "final_val_top1": [r["curve"][-1]["val_top1"] for r in rs],
            "steps_to_kd_final": reach, "early_step2_val": [early_step2(r["curve"], s1) for r in rs],
            "block_mse_after_step1": {b: statistics.mean(r["block_mse_after_step1"].get(b, float("nan")) for r in rs)
                                      for b in blocks} if all(r["block_mse_after_step1"] for r in rs) else {},
            "block_mse": {b: statistics.mean(r["block_mse"][b] for r in rs) for b in blocks},
            "test_minus_kd_points": [100 * (runs[v][s]["test_top1"] - runs["kd"][s]["test_top1"]) for s in paired],
            "seconds": statistics.mean(r["seconds"] for r in rs),
            "threads": sorted({r.get("threads", 2) for r in rs})}  # runs before the field existed used 2
    return out


def report(res: dict[str, Any], a: argparse.Namespace) -> None:
    quarter = a.steps // 4
    sections, summary, goal_rows = [], {}, []
    for name, lr in sections_in(res):
        arm = ARMS[name]
        sm = summarize(res, name, lr, seeds_in(res, name, lr))
        if not sm["seeds"]:
            continue
        summary[f"{name}/lr{lr:g}"] = sm
        rows, mse_rows = [], []
        for v, st in sm["variants"].items():
            reach = ", ".join("never" if s is None else str(s) for s in st["steps_to_kd_final"])
            d = st["test_minus_kd_points"]
            rows.append([LABEL[v], _ms(st["test_top1"]), _ms(st["final_val_top1"]), _ms(st["early_step2_val"]), reach,
                         "–" if v == "kd" else f"{statistics.mean(d):+.2f} ± {statistics.stdev(d) if len(d) > 1 else 0:.2f}",
                         f"{st['seconds']:.0f} ({'/'.join(map(str, st['threads']))} thr.)"])
            for when, key in (("after step 1", "block_mse_after_step1"), ("end", "block_mse")):
                if st[key]:
                    mse_rows.append([LABEL[v], when, *(f"{x:.4f}" for x in st[key].values())])
            if v != "kd" and arm.arch.startswith("vit"):
                reached = [s is not None and s <= quarter for s in st["steps_to_kd_final"]]
                level = statistics.mean(d) >= 0
                goal_rows.append([name, f"{lr:g}", LABEL[v], f"{sum(reached)}/{len(reached)}",
                                  f"{statistics.mean(d):+.2f}", "met" if all(reached) and level else "not met"])
        blocks = list(next(iter(sm["variants"].values()))["block_mse"])
        fp = 100 * res.get(f"{name}/fp32_test_top1", float("nan"))
        sections.append(
            f"## {name}: {arm.arch} {arm.bits} (FP32 teacher {fp:.2f} %), lr {lr:g}, seeds {sm['seeds']}\n\n"
            + md_table(["method", "test top-1 %", "final val top-1 %", "mean val % over step 2's first 100 steps",
                        "steps to the same seed's final QAT-KD val (per seed)", "test Δ vs QAT-KD, pt (paired)",
                        "s per run"], rows)
            + "\n\nPer-block MSE to the teacher (512 val images, student's own path, mean over seeds):\n\n"
            + md_table(["method", "when", *blocks], mse_rows) + "\n")
    if not sections:
        print("no results yet")
        return
    _plot(res, a)
    env = res.get("environment", {})
    cpu = env.get("cpu", {})
    md = ("# Teacher Intervention vs QAT-KD where QAT converges slowly (real Fashion-MNIST)\n\n"
          f"`python benchmarks/ti_vs_qat_kd.py --arms ARM --lrs LR --seeds S… --steps {a.steps}` (arm, learning rate and "
          f"seeds per section below) on {cpu.get('model', '?')} "
          f"({cpu.get('logical_cores', '?')} logical cores, ISA {', '.join(cpu.get('isa', []))}), torch "
          f"{env.get('versions', {}).get('torch', '?')}. {a.train_images} training images, "
          f"batch {a.batch}, {a.steps} steps, TI step 1 = {int(a.ti_frac * a.steps)} steps; the TI paper's loss set for every "
          "variant; AdamW, linear warm-up 10 % then linear decay; val top-1 on "
          f"{a.eval_images} val images every 10 steps up to step {a.eval_dense_until}, then every {a.eval_every}; test = "
          "the 10k test images. Curves: "
          f"`results/{a.name}_curves.png`. Protocol: the docstring of `benchmarks/ti_vs_qat_kd.py`. \"s per run\" is the "
          "wall time of one run at the torch threads shown; some arms shared the machine with other jobs, so it "
          "compares methods within a section, not sections.\n\n"
          f"## Goal: TI reaches QAT-KD's final val top-1 within {quarter} steps (¼) on every seed and ends at least level "
          "(mean paired test Δ ≥ 0), on at least one transformer arm\n\n"
          + md_table(["arm", "lr", "method", f"seeds reaching QAT-KD's final within {quarter} steps",
                      "mean test Δ vs QAT-KD (pt)", "goal"], goal_rows) + "\n\n" + "\n".join(sections))
    save(a.name, {"args": vars(a), "summary": summary, "run_environment": env,
                          "runs": {k: v for k, v in res.items() if k != "environment"}}, md)


def _plot(res: dict[str, Any], a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(n, lr) for n, lr in sections_in(res) if summarize(res, n, lr, seeds_in(res, n, lr))["seeds"]]
    if not panels:
        return
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), dpi=100, squeeze=False)
    for ax, (name, lr) in zip(axes.flat, panels):
        sm = summarize(res, name, lr, seeds_in(res, name, lr))
        finals = []
        for v in ARMS[name].variants:
            curves = [res[f"{name}/lr{lr:g}/{v}/s{s}"]["curve"] for s in sm["seeds"]]
            steps = [c["step"] for c in curves[0]]
            vals = 100 * np.array([[c["val_top1"] for c in cu] for cu in curves])
            m, sd = vals.mean(0), vals.std(0)
            ax.plot(steps, m, label=LABEL[v].split(" (")[0])
            ax.fill_between(steps, m - sd, m + sd, alpha=0.2)
            finals.append(m[-1])
        ax.set_ylim(min(finals) - 10, max(finals) + 2)
        ax.set_title(f"{name}, lr {lr:g}", fontsize=9)
        ax.set_xlabel("QAT step")
        ax.set_ylabel("val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"{a.name}_curves.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
