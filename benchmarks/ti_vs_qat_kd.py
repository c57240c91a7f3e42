"""Teacher Intervention vs plain QAT-KD: accuracy-vs-step curves on real Fashion-MNIST.

    python benchmarks/ti_vs_qat_kd.py --model cnn        # demo CNN teacher (resnet-l), TI-B vs KD
    python benchmarks/ti_vs_qat_kd.py --model vit        # small ViT teacher, TI-G/O/C/M vs KD

The FP teacher is quantized into its own student (same architecture, every Conv/Linear/attention matmul
fake-quantized, first and last layers at 8 bits), which then trains with QAT-KD for ``--steps`` steps; TI variants
spend the first ``--ti-frac`` of the same budget in intervention (step 1) and the rest in plain QAT-KD (step 2).
Reported: val top-1 every ``--eval-every`` steps (2,000 held-out val images), steps for TI to reach plain QAT-KD's
final accuracy, final test top-1 (10k), and per-block MSE to the teacher at the end. Goal (issue #3): TI reaches
plain's final accuracy in ≤ ¼ of the steps and ends ≥ plain.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import REPO, RESULTS, md_table, save

from edgekd.data import load_dataset
from edgekd.kd.trainer import accuracy, predict_logits
from edgekd.models.loading import load_model
from edgekd.quant.qat import QATConfig, parse_bits, quantized_copy
from edgekd.quant.qat_train import QATTrainConfig, train_qat

MODELS = {"cnn": ("examples/fmnist_teacher.state_dict.pt", "resnet-l", ["kd", "b"]),
          "vit": ("examples/fmnist_vit_teacher.state_dict.pt", "vit-tiny", ["kd", "g", "o", "c", "m"])}


def steps_to_reach(curve: list[dict], target: float) -> int | None:
    return next((c["step"] for c in curve if c["val_top1"] >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="cnn")
    ap.add_argument("--bits", nargs="+", default=["w4a8", "ternary"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--ti-frac", type=float, default=0.15)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--from-json", action="store_true", help="rebuild the Markdown and plot from the saved JSON")
    a = ap.parse_args()
    if a.from_json:
        import json

        saved = json.loads((RESULTS / f"ti_{a.model}.json").read_text())
        for k, v in saved["args"].items():
            if k != "from_json":
                setattr(a, k, v)
        report(a, saved["arch"], saved["fp32_test_top1"], MODELS[a.model][2], saved["runs"])
        return
    torch.set_num_threads(2)
    path, arch, variants = MODELS[a.model]
    data = load_dataset("fashion-mnist", mean=[0.2860], std=[0.3530])
    fp = load_model(REPO / path, arch=arch).module.eval()
    fp_test = accuracy(predict_logits(fp, data.test.x), data.test.y)
    print(f"{arch} fp32 test top-1 {fp_test:.4f}", flush=True)
    runs = []
    for bits in a.bits:
        for seed in a.seeds:
            for v in variants:
                torch.manual_seed(seed)
                student, _ = quantized_copy(fp, QATConfig(**parse_bits(bits)))
                cfg = QATTrainConfig(steps=a.steps, lr=a.lr, ti="none" if v == "kd" else v, ti_steps=max(1, int(a.ti_frac * a.steps)),
                                     eval_every=a.eval_every, seed=seed)
                t0 = time.time()
                res = train_qat(fp, student, data, cfg)
                test = accuracy(predict_logits(student, data.test.x), data.test.y)
                runs.append({"bits": bits, "seed": seed, "variant": v, "curve": res["curve"], "final_val_top1": res["final_val_top1"],
                             "test_top1": test, "block_mse": res["block_mse"], "seconds": time.time() - t0})
                print(bits, seed, v, f"test {test:.4f}", f"{time.time() - t0:.0f}s", flush=True)
    report(a, arch, fp_test, variants, runs)


def report(a: argparse.Namespace, arch: str, fp_test: float, variants: list[str], runs: list[dict]) -> None:
    rows, summary = [], {}
    for bits in a.bits:
        kd_final = statistics.mean(r["final_val_top1"] for r in runs if r["bits"] == bits and r["variant"] == "kd")
        for v in variants:
            rs = [r for r in runs if r["bits"] == bits and r["variant"] == v]
            reach = [steps_to_reach(r["curve"], kd_final) for r in rs]
            test = [r["test_top1"] for r in rs]
            early = [r["curve"][min(len(r["curve"]) - 1, max(1, len(r["curve"]) // 4))]["val_top1"] for r in rs]
            summary[f"{bits}/{v}"] = {"test_mean": statistics.mean(test), "test_std": statistics.stdev(test) if len(test) > 1 else 0.0,
                                      "steps_to_kd_final": reach, "val_at_quarter": early}
            reach_txt = ", ".join("never" if s is None else str(s) for s in reach)
            rows.append([bits, "QAT-KD" if v == "kd" else f"TI-{v.upper()}", f"{100 * statistics.mean(test):.2f} ± {100 * summary[f'{bits}/{v}']['test_std']:.2f}",
                         f"{100 * statistics.mean(early):.2f}", reach_txt])
    _plot(runs, a, arch)
    blocks = list(runs[0]["block_mse"])
    mse_rows = []
    for bits in a.bits:
        for v in variants:
            rs = [r for r in runs if r["bits"] == bits and r["variant"] == v]
            mse_rows.append([bits, "QAT-KD" if v == "kd" else f"TI-{v.upper()}",
                             *[f"{statistics.mean(r['block_mse'][b] for r in rs):.4f}" for b in blocks]])
    md = (f"# Teacher Intervention vs QAT-KD — {arch} on Fashion-MNIST\n\n"
          f"FP32 teacher (= the model being quantized) test top-1 {100 * fp_test:.2f} %. {a.steps} QAT steps, batch 64, "
          f"AdamW lr {a.lr}; TI step 1 = first {int(a.ti_frac * a.steps)} steps; seeds {a.seeds}. Curves: "
          f"`results/ti_{a.model}_curves.png`.\n\n"
          + md_table(["bits", "method", "test top-1 % (mean ± std)", f"val top-1 % at step ≈{a.steps // 4}",
                      "steps to reach QAT-KD's final val top-1 (per seed)"], rows)
          + "\n\nPer-block MSE between the quantized student's and the FP teacher's block outputs after QAT (512 val "
          "images, student's own path, mean over seeds):\n\n" + md_table(["bits", "method", *blocks], mse_rows) + "\n")
    save(f"ti_{a.model}", {"arch": arch, "fp32_test_top1": fp_test, "args": vars(a), "summary": summary, "runs": runs}, md)


def _plot(runs: list[dict], a: argparse.Namespace, arch: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(a.bits), figsize=(5.5 * len(a.bits), 4), dpi=100, squeeze=False)
    for ax, bits in zip(axes[0], a.bits):
        for v in sorted({r["variant"] for r in runs}):
            rs = [r for r in runs if r["bits"] == bits and r["variant"] == v]
            steps = [c["step"] for c in rs[0]["curve"]]
            vals = np.array([[c["val_top1"] for c in r["curve"]] for r in rs]) * 100
            m, s = vals.mean(0), vals.std(0)
            label = "QAT-KD" if v == "kd" else f"TI-{v.upper()}"
            ax.plot(steps, m, label=label)
            ax.fill_between(steps, m - s, m + s, alpha=0.2)
        ax.set_title(f"{arch} {bits}")
        ax.set_xlabel("QAT step")
        ax.set_ylabel("val top-1 (%)")
        finals = [r["curve"][-1]["val_top1"] * 100 for r in runs if r["bits"] == bits]
        ax.set_ylim(min(finals) - 8, max(finals) + 1.5)  # the end of training; early steps fall below
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / f"ti_{a.model}_curves.png")


if __name__ == "__main__":
    main()
