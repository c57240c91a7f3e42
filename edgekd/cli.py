"""The ``edgekd`` command line: parses, calls :mod:`edgekd.api`, prints. Nothing else.

Errors from edgekd are printed as one line with a hint (exit 2 for usage errors, 1 otherwise); ``--debug`` shows
the traceback. Ctrl-C keeps every finished stage; re-running resumes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, List, Optional

import typer

from edgekd import cli_args, progress
from edgekd.errors import EdgekdError, Interrupted, UsageError
from edgekd.rundir import FILESYSTEM_ERRNOS, filesystem_error

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Distill, quantize, export, lower and benchmark a PyTorch model for an edge device.")
_STATE = {"debug": False}


@app.callback()
def _root(quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
          debug: bool = typer.Option(False, "--debug", help="show tracebacks")) -> None:
    progress.set_quiet(quiet)
    _STATE["debug"] = debug


def _print_summary(report: dict[str, Any]) -> None:
    rows = report.get("rows", [])
    if not rows:
        return
    typer.echo("")
    typer.echo(report["markdown"])


MODEL = typer.Argument(None, help="model file: TorchScript, .pt2, state_dict (+ --arch), or pickled module (+ --allow-pickle)")
TARGET = typer.Option(None, "--target", "-t", help="device profile(s), e.g. x86-cpu,intel-cpu (list: edgekd targets)")
DATA = typer.Option(None, "--data", "-d", help="IDX folder, image folder (one subfolder per class), .npz, a detection set (COCO or "
                    "YOLO layout), or fashion-mnist")
METRIC = typer.Option(None, "--metric", help="your metric, file.py:fn or module:fn: fn(outputs: dict of numpy arrays, "
                      "targets) -> dict of floats; its primary key headlines the report (runs your code)")
SET = typer.Option(None, "--set", help="any config key, SECTION.KEY=VALUE (repeatable; the value is read as YAML), "
                   "e.g. --set quantize.plan.ranking_samples=500; the named flags win over it")
CONFIG = typer.Option(None, "--config", "-c", help="pipeline.yaml; command-line options override it")
RUN = typer.Option(None, "--run-dir", "-o", help="run directory (default runs/<model name>)")
INPUT = typer.Option(None, "--input", help="NAME=SHAPE: the model input the data feed, for a model with several "
                     "inputs, e.g. --input audio=1x1024 (the others are bound with --const)")
CONST = typer.Option(None, "--const", help="NAME=VALUE: bind a model input to a constant (repeatable): a number, a "
                     "list ([1,2]) or a .npy file, e.g. --const sr=16000")
TASK = typer.Option(None, "--task", help="auto (default) | classify | detect | outputs: how the model's outputs are distilled "
                    "and scored (detect: dense detectors, mAP; outputs: embeddings, regression, multi-label, several heads)")


def _common(model: Optional[str], config: Optional[Path], target: Optional[List[str]], data: Optional[str], run_dir: Optional[Path],
            arch: Optional[str], input_shape: Optional[str], allow_pickle: bool, inputs: Optional[List[str]] = None,
            consts: Optional[List[str]] = None, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "config": config, "targets": cli_args.targets_list(target), "run_dir": str(run_dir) if run_dir else None,
                           "arch": arch, "input_shape": input_shape, "allow_pickle": allow_pickle or None,
                           **cli_args.bindings(inputs, consts)}
    if data is not None:
        out["data__path"] = data
    out.update(kw)
    return out


@app.command()
def compress(
    model: Optional[str] = MODEL,
    target: Optional[List[str]] = TARGET,
    data: Optional[str] = DATA,
    config: Optional[Path] = CONFIG,
    run_dir: Optional[Path] = RUN,
    task: Optional[str] = TASK,
    metric: Optional[str] = METRIC,
    arch: Optional[str] = typer.Option(None, help="module.path:factory or file.py:factory for a state_dict (or a zoo name)"),
    input_shape: Optional[str] = typer.Option(None, help="the input shape with a batch of 1 when the file does not record "
                                              "it: NxCxHxW for images (1x1x28x28), any shape otherwise (1x1024)"),
    input_: Optional[List[str]] = INPUT,
    const: Optional[List[str]] = CONST,
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="allow loading a pickled module (runs code from the file)"),
    student: Optional[str] = typer.Option(None, help="zoo student (resnet-s, mobilenet-s, ...) or module:factory"),
    loss: Optional[str] = typer.Option(None, help="kd | dkd | dist | nkd | ce"),
    epochs: Optional[int] = typer.Option(None, min=1),
    batch_size: Optional[int] = typer.Option(None, min=1),
    lr: Optional[float] = typer.Option(None),
    feature: Optional[List[str]] = typer.Option(None, help="feature KD pair STUDENT_PATH:TEACHER_PATH (repeatable)"),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment"),
    mixup: Optional[float] = typer.Option(None, "--mixup", min=0.0, help="mixup α for distillation (teacher sees the mixed "
                                          "images; default 0, or 1 in data-free runs)"),
    no_distill: bool = typer.Option(False, "--no-distill", help="quantize the teacher itself"),
    precision: Optional[str] = typer.Option(None, help="int8 | fp32 (default: the profile's)"),
    calibration: Optional[str] = typer.Option(None, help="calibration recipe: default | small | large | path.yaml"),
    qat: Optional[str] = typer.Option(None, help="quantization-aware training instead of PTQ: kd | ti"),
    bits: Optional[str] = typer.Option(None, help="QAT bit widths: w8a8 | w4a8 | w2a8 | ternary | w4a4"),
    ti_mode: Optional[str] = typer.Option(None, help="Teacher Intervention: auto | g | o | c | m (attention) | rg | ro | rm (residual branches of CNNs) | br (block reconstruction)"),
    qat_steps: Optional[int] = typer.Option(None, min=1),
    keep_fp: Optional[List[str]] = typer.Option(None, help="module path kept in floating point (repeatable)"),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0, help="precision planner: the most points of "
                                             "the primary metric INT8 may lose vs FP32 on val; layers are kept in float "
                                             "until it holds, and FP32 ships when no INT8 plan is faster"),
    latency_budget_ms: Optional[float] = typer.Option(None, "--latency-budget-ms", help="precision planner: batch-1 "
                                                      "p50 budget on the target (needs --max-drop)"),
    synth: Optional[str] = typer.Option(None, "--synth", help="data-free synthesis: auto | genie | deepinversion | adi | zeroq | dfad | dfad-bn | dfad-balanced "
                                        "(default with no --data: auto; with --data: mix synthetic images into the real ones)"),
    synth_n: Optional[int] = typer.Option(None, "--synth-n", help="number of synthetic images (default 2048)"),
    synth_iterations: Optional[int] = typer.Option(None, "--synth-iterations", help="per batch (default: the method's)"),
    synth_lr: Optional[float] = typer.Option(None, "--synth-lr"),
    threads: Optional[int] = typer.Option(None, help="threads for benchmarking (default: the profile's)"),
    data_limit: Optional[int] = typer.Option(None, help="train on only the first N training samples"),
    eval_limit: Optional[int] = typer.Option(None, help="score on only the first N test samples"),
    mean: Optional[str] = typer.Option(None, help="per-channel mean on the 0..1 scale, e.g. 0.286"),
    std: Optional[str] = typer.Option(None, help="per-channel std on the 0..1 scale, e.g. 0.353"),
    resize: Optional[str] = typer.Option(None, help="images of another size: stretch (default) | letterbox | center-crop"),
    mlflow: bool = typer.Option(False, "--mlflow", help="log config, metrics and report to MLflow (pip install 'edgekd[mlflow]')"),
    mlflow_uri: Optional[str] = typer.Option(None, "--mlflow-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else ./mlruns)"),
    set_: Optional[List[str]] = SET,
) -> None:
    """Run every stage: distill → export → quantize → lower → bench, then print the report."""
    from edgekd import api

    sets = cli_args.sets(set_)
    if latency_budget_ms is not None and max_drop is None and config is None and "quantize__plan__max_drop" not in sets:
        raise UsageError("--latency-budget-ms is a budget of the precision planner, which needs an accuracy budget too",
                         "add --max-drop POINTS (e.g. --max-drop 1.0)")

    kw = _common(model, config, target, data, run_dir, arch, input_shape, allow_pickle, input_, const, task=task,
                 metric=metric, distill__student=student, distill__loss=loss, distill__epochs=epochs, distill__batch_size=batch_size,
                 distill__lr=lr, distill__features=cli_args.features(feature), distill__augment=augment, distill__mixup=mixup,
                 distill__enabled=False if no_distill else None, quantize__precision=precision,
                 quantize__calibration=calibration, quantize__qat=qat, quantize__bits=bits, quantize__ti_mode=ti_mode,
                 quantize__qat_steps=qat_steps, quantize__keep_fp=keep_fp or None, quantize__plan__max_drop=max_drop,
                 quantize__plan__latency_budget_ms=latency_budget_ms, bench__threads=threads, data__limit=data_limit,
                 data__eval_limit=eval_limit, data__mean=cli_args.floats(mean, "--mean"), data__std=cli_args.floats(std, "--std"),
                 data__resize=resize, tracking__mlflow=True if (mlflow or mlflow_uri) else None,
                 tracking__mlflow_uri=mlflow_uri, synth__method=synth,
                 synth__n=synth_n, synth__iterations=synth_iterations, synth__lr=synth_lr,
                 synth__mix=True if (synth and data) else None)
    kw = {**sets, **{k: v for k, v in kw.items() if v is not None}}
    m, c = kw.pop("model", None), kw.pop("config", None)
    _print_summary(api.compress(m, config=c, **kw))


@app.command(name="synth")
def synth_cmd(
    model: str = typer.Argument(..., help="the teacher model file"),
    out: Path = typer.Option(Path("synth.npz"), "--out", "-o", help="output .npz (a preview grid .png and a .json go next to it)"),
    n: int = typer.Option(2048, "--n", min=1, help="number of images"),
    method: str = typer.Option("auto", "--method", "-m", help="auto | genie | deepinversion | adi | zeroq | dfad | dfad-bn | dfad-balanced "
                               "(auto makes a calibration set: genie with BatchNorm, dfad without; for a distillation "
                               "transfer set adi / dfad-balanced do better)"),
    iterations: Optional[int] = typer.Option(None, help="per batch (default: the method's published setting)"),
    batch_size: Optional[int] = typer.Option(None, min=2),
    lr: Optional[float] = typer.Option(None),
    seed: int = typer.Option(0),
    arch: Optional[str] = typer.Option(None),
    input_shape: Optional[str] = typer.Option(None),
    allow_pickle: bool = typer.Option(False, "--allow-pickle"),
    mean: Optional[str] = typer.Option(None, help="the teacher's input mean (0..1 scale), to clip pixels to the valid range"),
    std: Optional[str] = typer.Option(None),
) -> None:
    """Synthesize data from the teacher alone (data-free): BN-statistics inversion or DFAD. Works under torchrun."""
    from edgekd import api

    res = api.synth(model, out=out, n=n, method=method, iterations=iterations, batch_size=batch_size, lr=lr, seed=seed,
                    arch=arch, input_shape=input_shape, allow_pickle=allow_pickle, mean=cli_args.floats(mean, "--mean"),
                    std=cli_args.floats(std, "--std"))
    if res.get("written"):
        typer.echo(f"{res['method']}: {res['n']} images in {res['seconds']:.1f} s ({res['seconds_per_1000_images']:.1f} s per 1000) "
                   f"→ {res['out']} (+ {Path(res['preview']).name})")


def _stage_cmd(stage: str):  # noqa: ANN202
    def cmd(
        model: Optional[str] = MODEL,
        target: Optional[List[str]] = TARGET,
        data: Optional[str] = DATA,
        config: Optional[Path] = CONFIG,
        run_dir: Optional[Path] = RUN,
        task: Optional[str] = TASK,
        metric: Optional[str] = METRIC,
        arch: Optional[str] = typer.Option(None),
        input_shape: Optional[str] = typer.Option(None),
        input_: Optional[List[str]] = INPUT,
        const: Optional[List[str]] = CONST,
        allow_pickle: bool = typer.Option(False, "--allow-pickle"),
        set_: Optional[List[str]] = SET,
    ) -> None:
        from edgekd import api

        kw = _common(model, config, target, data, run_dir, arch, input_shape, allow_pickle, input_, const, task=task,
                     metric=metric)
        kw = {**cli_args.sets(set_), **{k: v for k, v in kw.items() if v is not None}}
        m, c, rd = kw.pop("model", None), kw.pop("config", None), kw.pop("run_dir", None)
        if m is None and c is None and rd is None:
            raise typer.BadParameter("pass a model file, --config, or --run-dir of an existing run")
        res = getattr(api, stage)(m, config=c, run_dir=rd, **kw)
        recs = res if stage in ("quantize", "lower") else {stage: res}
        for name, rec in recs.items():
            typer.echo(f"{stage} {name}: {rec.get('status')}{' (up to date)' if rec.get('skipped') else ''} "
                       f"{', '.join(f'{k}={v}' for k, v in rec.get('outputs', {}).items())}")

    cmd.__doc__ = f"Run the pipeline up to the {stage} stage (earlier stages are reused when up to date)."
    return cmd


for _s in ("distill", "export", "quantize", "lower"):
    app.command(name=_s)(_stage_cmd(_s))


@app.command()
def sensitivity(run_dir: Path = typer.Argument(..., help="a run directory made by edgekd compress"),
                target: Optional[str] = typer.Option(None, "--target", "-t", help="one of the run's targets (default: its first)"),
                top: int = typer.Option(15, "--top", min=1, help="how many layers to list"),
                ranking: Optional[str] = typer.Option(None, "--ranking", help="measured: each layer kept in float alone "
                                                      "and scored (points); proxy: the error each layer adds (a planned "
                                                      "run's default; quantize.plan.ranking)"),
                arch: Optional[str] = typer.Option(None, help="the run's --arch factory (not a zoo name), named again"),
                student: Optional[str] = typer.Option(None, help="the run's --student factory (not a zoo name), named again"),
                metric: Optional[str] = typer.Option(None, "--metric", help="the run's --metric, named again"),
                allow_pickle: bool = typer.Option(False, "--allow-pickle", help="for a run of a pickled model")) -> None:
    """Per-layer INT8 sensitivity on the target's runtime: each layer kept in float alone and scored on val (a run with
    a plan: as its quantize.plan.ranking says, by default the proxy — the error each layer adds)."""
    from edgekd import api

    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist", "pass a folder made by edgekd compress")
    if ranking not in (None, "measured", "proxy"):
        raise UsageError(f"--ranking {ranking!r} is not a ranking", "use --ranking measured or --ranking proxy")
    res = api.sensitivity(run_dir, target, ranking, arch=arch, distill__student=student, metric=metric, allow_pickle=allow_pickle or None)
    from edgekd.stages.sensitivity import sensitivity_table

    typer.echo(sensitivity_table(res, top))
    typer.echo(f"chart: {res['chart']}")


@app.command()
def bench(path: Path = typer.Argument(..., help="a run directory, or one artifact (.onnx, OpenVINO .xml, TensorRT .engine)"),
          profile: Optional[str] = typer.Option(None, "--profile", "-p", help="device profile for an artifact (name or .yaml)"),
          data: Optional[Path] = typer.Option(None, "--data", help="for an artifact: .npz with x (inputs) and y (labels)"),
          out: Optional[Path] = typer.Option(None, "--out", help="for an artifact: folder for result.json/.md and latency.png"),
          threads: Optional[int] = typer.Option(None, help="override the profile's thread count"),
          arch: Optional[str] = typer.Option(None, help="for a run: the --arch factory it was made with (not a zoo name), "
                                             "named again: edgekd never imports code that a file names"),
          student: Optional[str] = typer.Option(None, help="for a run: its --student factory (not a zoo name), named again"),
          metric: Optional[str] = typer.Option(None, "--metric", help="your metric (file.py:fn or module:fn); for a run: "
                                               "its --metric, named again (edgekd never runs code that a file names)"),
          allow_pickle: bool = typer.Option(False, "--allow-pickle", help="for a run of a pickled model: allow loading it "
                                            "(the run's own record of this opt-in is not used)")) -> None:
    """Re-measure a run (rewrites its report), or measure one artifact on this device — no torch needed for that."""
    from edgekd import api

    if path.is_file():
        if not profile:
            raise UsageError(f"benchmarking the artifact {path.name} needs a device profile", "add --profile NAME (list: edgekd targets)")
        typer.echo(api.bench_file(path, profile, data, threads, out, metric)["markdown"])
        return

    if not path.is_dir():
        raise UsageError(f"{path} does not exist", "pass a run directory made by edgekd compress, or an artifact file")
    _print_summary(api.bench(path, bench__threads=threads, arch=arch, distill__student=student, metric=metric,
                             allow_pickle=allow_pickle or None))


@app.command()
def report(run_dirs: List[Path] = typer.Argument(..., help="a run directory (two with --compare)"),
           compare: bool = typer.Option(False, "--compare", help="compare two runs side by side")) -> None:
    """Write report.md, report.json, pareto.png and latency.png for a run and print the table; or compare two runs."""
    from edgekd import api

    for d in run_dirs:
        if not d.is_dir():
            raise UsageError(f"run directory {d} does not exist", "pass a folder made by edgekd compress")
    if compare:
        if len(run_dirs) != 2:
            raise UsageError(f"--compare takes two run directories, got {len(run_dirs)}", "edgekd report --compare RUN_A RUN_B")
        typer.echo(api.compare(run_dirs[0], run_dirs[1])["markdown"])
        return
    if len(run_dirs) != 1:
        raise UsageError("report takes one run directory", "use --compare for two")
    rep = api.report(run_dirs[0])
    typer.echo(rep["markdown"])


@app.command()
def targets(args: Optional[List[str]] = typer.Argument(None, help="a wildcard (e.g. 'jetson-*'), or: show NAME"),
            show: bool = typer.Option(False, "--show", help="print the full profile(s) as YAML")) -> None:
    """List device profiles (built-in and from $EDGEKD_TARGETS_PATH); `edgekd targets show NAME` prints one."""
    import yaml

    from edgekd import api
    from edgekd.targets import resolve

    args = list(args or [])
    if args and args[0] == "show":
        if len(args) != 2:
            raise UsageError("targets show takes one profile name", "e.g. edgekd targets show jetson-orin-nano")
        p = resolve(args[1])
        typer.echo(yaml.safe_dump(p.model_dump(exclude={"source"}), sort_keys=False).rstrip())
        typer.echo(f"# from {p.source}")
        return
    pattern = args[0] if args else "*"
    profs = api.targets(pattern)
    if not profs:
        raise UsageError(f"no target matches {pattern!r}", "run edgekd targets to list them all")
    for p in profs:
        if show:
            typer.echo(yaml.safe_dump(p.model_dump(exclude={"source"}), sort_keys=False))
        else:
            alias = f" (aliases: {', '.join(p.aliases)})" if p.aliases else ""
            typer.echo(f"{p.name:<20} {p.backend:<12} {p.default_precision:<5} {p.description}{alias}")


@app.command()
def inspect(model: str = typer.Argument(...), arch: Optional[str] = typer.Option(None),
            input_shape: Optional[str] = typer.Option(None), input_: Optional[List[str]] = INPUT,
            const: Optional[List[str]] = CONST, allow_pickle: bool = typer.Option(False, "--allow-pickle")) -> None:
    """Print a model's format, input shape and module paths (for --feature and intervention points)."""
    from edgekd import api

    info = api.inspect(model, arch=arch, input_shape=input_shape, allow_pickle=allow_pickle, **cli_args.bindings(input_, const))
    typer.echo(f"format: {info['format']}\ninput shape: {info['input_shape']}\nsha256: {info['sha256']}")
    if input_ or const:
        typer.echo(f"data input: {info['input_name']} (the others bound; module paths start with module.)")
    for name, kind in info["modules"]:
        typer.echo(f"  {name}: {kind}")


def _on_sigint(_signum: int, _frame: Any) -> None:
    raise Interrupted()


def main(argv: Optional[list[str]] = None) -> int:
    """Run the CLI and return its exit code (see :mod:`edgekd.errors`: 0 ok, 1 bug, 2 bad input, 3 gate failed,
    130 interrupted)."""
    argv = cli_args.hoist_global_flags(list(sys.argv[1:] if argv is None else argv))
    debug = "--debug" in argv
    if debug:
        os.environ["EDGEKD_DEBUG"] = "1"  # the benchmark worker's full output is printed when it fails
    else:
        cli_args.quiet_third_party()
    previous = signal.signal(signal.SIGINT, _on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        app(args=argv, prog_name="edgekd")  # standalone mode: usage errors print and exit 2 via SystemExit
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Interrupted:
        if debug:
            traceback.print_exc()
        print("interrupted: finished stages are kept in the run directory; run the same command again to resume",
              file=sys.stderr)
        return 130
    except EdgekdError as e:
        if _STATE["debug"] or debug:
            traceback.print_exc()
        print(f"error: {e.one_line()}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in FILESYSTEM_ERRNOS:
            raise
        if _STATE["debug"] or debug:
            traceback.print_exc()
        err = filesystem_error(e, e.filename or "a file")
        print(f"error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except ModuleNotFoundError as e:
        if _STATE["debug"] or "--debug" in argv:
            traceback.print_exc()
        hint = {"torch": "this command trains or exports: pip install 'edgekd[full]' (device-side benchmarking needs only 'edgekd[runtime]')",
                "openvino": "pip install 'edgekd[runtime]' (or openvino)", "onnxruntime": "pip install 'edgekd[runtime]'",
                "tensorrt": "TensorRT comes with JetPack / NVIDIA's packages"}.get((e.name or "").split(".")[0], "install the missing package")
        print(f"error: the {e.name} package is not installed (hint: {hint})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept in the run directory; run the same command again to resume",
              file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    raise SystemExit(main())
