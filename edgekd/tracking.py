"""Opt-in experiment tracking: a finished run's config, metrics and report files logged to MLflow (issue #19).

    edgekd compress teacher.pt2 -t x86-cpu -d data/ --mlflow                    # MLFLOW_TRACKING_URI, else ./mlruns
    tracking: {mlflow: true, mlflow_uri: "file:///srv/mlruns", experiment: edge}   # in a config file

Params are the flattened config (``distill.epochs``, …); metrics are one per report row and measure
(``x86-cpu.student.int8.top1``, ``….p50_ms``, ``….speedup``); the report, its plots and the manifest are artifacts.
Needs ``mlflow-skinny`` (``pip install 'edgekd[mlflow]'``); nothing is imported unless tracking is on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgekd.errors import UsageError


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = str(v)[:500]  # MLflow's parameter values are bounded
    return out


def row_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """One metric per report row and measure: the task's primary metric under its own name (``top1``,
    ``fidelity_r2``), p50, speed-up, size and memory."""
    out: dict[str, float] = {}
    for r in rows:
        name = f"{r['target']}.{r['model']}.{r['precision']}"
        for key, metric in (("metric", r.get("metric_name", "top1")), ("p50_ms", "p50_ms"), ("speedup_vs_teacher_p50", "speedup"),
                            ("size_bytes", "size_bytes"), ("peak_rss_mb", "peak_rss_mb")):
            if isinstance(r.get(key), (int, float)):
                out[f"{name}.{metric}"] = float(r[key])
    return out


def log_to_mlflow(run_dir: Path, config: dict[str, Any], report: dict[str, Any], *, uri: str | None,
                  experiment: str) -> str:
    """Log one finished run; returns the MLflow run id."""
    try:
        import mlflow
    except ImportError:
        raise UsageError("--mlflow needs the mlflow-skinny package", "pip install 'edgekd[mlflow]'") from None
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
    if uri.startswith("file:") or "://" not in uri:
        # a local folder: MLflow 3 keeps its file backend in maintenance mode and refuses it unless asked; it is what
        # a user without a tracking server has (mlflow-skinny carries no database backend)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_dir.name) as run:
        params = flatten(config)
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            mlflow.log_params(dict(list(params.items())[i : i + 100]))
        mlflow.log_metrics(row_metrics(report.get("rows", [])))
        mlflow.set_tags({"edgekd.run_dir": str(run_dir), "edgekd.failures": str(len(report.get("failures") or {}))})
        for name in ("report.md", "report.json", "pareto.png", "latency.png", "manifest.json"):
            if (run_dir / name).exists():
                mlflow.log_artifact(str(run_dir / name))
        return run.info.run_id
