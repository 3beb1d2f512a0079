"""One MLflow run per trial, and what a trial records in it.

A trial run always ends: FINISHED only when the trial's body returned, FAILED (with the error as a
tag and a traceback artifact) or KILLED on Ctrl-C or SIGTERM, even when recording the error fails.
"""
from __future__ import annotations

import logging
import os
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lpr_sweep.tracking import HASH_TAG, MODEL_TAG, OVERRIDES_TAG, ROLE_TAG, TrackingConfig, experiment_id, run_tags

log = logging.getLogger(__name__)


@contextmanager
def trial(cfg: TrackingConfig, *, run_name: str, params: dict[str, Any], parent_run_id: str | None,
          config_hash: str = "", packages: tuple[str, ...] = (), overrides: str = "") -> Iterator[Any]:
    import mlflow

    exp = experiment_id(cfg)
    run = mlflow.start_run(
        experiment_id=exp, run_name=run_name, parent_run_id=parent_run_id,
        tags={**run_tags(packages), ROLE_TAG: "trial", HASH_TAG: config_hash, OVERRIDES_TAG: overrides},
    )
    status = "FAILED"  # until the body returns; whatever raises below, the run never ends FINISHED by default
    try:
        mlflow.log_params(params)
        yield run
        status = "FINISHED"
    except BaseException as e:
        status = "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED"
        e.lpr_sweep_run_id = run.info.run_id  # __main__ reports it as recorded
        _record_error(e)
        raise
    finally:
        _end(run.info.run_id, status)


def _record_error(e: BaseException) -> None:
    """The error as a tag and a traceback artifact, as far as the store still takes them."""
    import mlflow

    try:
        text = f"KeyboardInterrupt: interrupted ({e or 'Ctrl-C'})" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        mlflow.set_tag("error", text[:4000])
        if not isinstance(e, KeyboardInterrupt):
            mlflow.log_text(traceback.format_exc(), "error.txt")
    except Exception as failed:  # e.g. the artifact folder is read-only: the status below matters more
        log.error("could not record the error of run %s: %s", mlflow.active_run().info.run_id if mlflow.active_run() else "?", failed)


def _end(run_id: str, status: str) -> None:
    """End the run with ``status``. ``end_run`` takes the run off MLflow's stack before it writes, so
    even when the store refuses, MLflow's exit hook cannot close it FINISHED later."""
    import mlflow

    try:
        mlflow.end_run(status)
    except Exception as e:
        log.error("could not mark run %s %s: %s; `resume=true` re-runs it", run_id, status, e)


_INTEGER = ("_bytes", "macs", "params_dense", "plates_gained", "plates_lost", "bench_blocks", "quant_candidates",
            "tune_trials_run", "tune_tasks", "tune_tasks_total", "tune_db_hit", "tune_tasks_tuned", "tune_tasks_transferred",
            "tune_failed_batches")


def rounded(metrics: dict[str, float]) -> dict[str, float]:
    """What a person reads in the UI: counts and bytes whole, everything else to 4 decimals."""
    return {k: float(round(v)) if k.endswith(_INTEGER) else round(float(v), 4) for k, v in metrics.items()}


def log_plates(root: Path, parts: dict[str, Any], seed: int = 0) -> None:
    """Each split as an MLflow dataset input (a name that says what it holds, the digest of its file
    list, the data root as source) and as a file list artifact."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from lpr_sweep.data import files_digest

    with warnings.catch_warnings():  # a local folder matches two source types that mean the same here
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(root))
    for part, plates in parts.items():
        listing = "\n".join(plates.files) + "\n"
        mlflow.log_text(listing, f"{part}_files.txt")
        if len(plates):
            name = f"lprnet-{part} ({len(plates)} plates, split seed {seed})"
            _log_input(MetaDataset(source, name=name, digest=files_digest(plates)), part)


def _log_input(dataset: Any, context: str) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_input(dataset, context=context)
    except MlflowException as e:
        # Parallel trials that log the same dataset at once race on the store's unique key (seen in
        # CI: two Ray trials on SQLite, "UNIQUE constraint failed: datasets..."). The row exists now,
        # so the second call only links it to this run.
        if "UNIQUE constraint" not in str(e) and "IntegrityError" not in str(e):
            raise
        mlflow.log_input(dataset, context=context)


def log_trial(params: dict[str, Any], description: str, config_yaml: str) -> None:
    import mlflow

    mlflow.log_params(params)
    mlflow.set_tag("mlflow.note.content", description)  # the run's description in the UI
    mlflow.log_text(config_yaml, "config.yaml")


def log_table(rows: list[dict], name: str) -> None:
    import csv
    import io

    import mlflow

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    mlflow.log_text(out.getvalue(), name)


def log_quant(guard: Any, params: dict[str, Any], verdict: str) -> None:
    import mlflow

    log_table(guard.rows, "quant_candidates.csv")
    if guard.sensitivity:
        log_table([{"conv_kept_float": n, "logit_mse": e} for n, e in guard.sensitivity], "quant_sensitivity.csv")
    mlflow.log_params(params)
    mlflow.set_tag("quant_guard", verdict)


def log_finetune(losses: list[float], files: list[str]) -> None:
    """The loss per step as one stepped metric (a curve in the UI) and the plates it trained on."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client, run_id = mlflow.MlflowClient(), mlflow.active_run().info.run_id
    curve = [Metric("finetune_loss", round(v, 6), now, step) for step, v in enumerate(losses)]
    for i in range(0, len(curve), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=curve[i:i + 1000])
    mlflow.log_text("\n".join(files) + "\n", "finetune_files.txt")


HEADLINE = ("speedup", "speedup_ci_low", "speedup_ci_high", "val_accuracy", "accuracy", "drop_pts", "size_file_bytes")


def log_result(metrics: dict[str, float | str], files: list[Path]) -> None:
    """Numbers as metrics; the few facts that are words (e.g. ``tune_db_source``) as params."""
    import mlflow

    words = {k: v for k, v in metrics.items() if isinstance(v, str)}
    # The UI lists a run's metrics in the order they were logged: the ones a user decides on first.
    ordered = {k: metrics[k] for k in HEADLINE if k in metrics} | {k: v for k, v in metrics.items() if k not in words}
    mlflow.log_metrics(rounded(ordered))
    if words:
        mlflow.log_params(words)
    for path in files:
        mlflow.log_artifact(str(path))


def model_name(run_name: str) -> str:
    """The logged model's name: the trial's, in the characters MLflow allows (no / : . % or quotes)."""
    return "lprnet " + "".join("_" if c in '/:.%"\'' else c for c in run_name)[:200]


def log_model(rt: Any, runtime_name: str, threads: int, packages: tuple[str, ...], example: np.ndarray, workdir: Path,
              precision: str = "fp32") -> str:
    """The trial's deployable as an MLflow Model (``tracking.deploy``); its URI is also the run's tag."""
    import mlflow

    from lpr_sweep.tracking import deploy

    folder = deploy.files_folder(rt, runtime_name, threads, workdir / "deploy", precision)
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)  # it suggests models-from-code; the pickled class imports lpr_sweep either way
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # validating the input example downloads it
    try:
        info = mlflow.pyfunc.log_model(
            name=model_name(mlflow.active_run().info.run_name), python_model=deploy.PlateReader(), artifacts={"files": str(folder)},
            signature=deploy.signature(), input_example=example, pip_requirements=deploy.requirements(packages),
            metadata={"input": deploy.INPUT},
        )
    finally:
        pyfunc_log.setLevel(level)
    mlflow.set_tag(MODEL_TAG, info.model_uri)
    return info.model_uri
