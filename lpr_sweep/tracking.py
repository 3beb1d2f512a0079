"""All MLflow calls live here: experiment set-up, one run per trial, one parent run per sweep.

A trial run always ends: FINISHED, FAILED (with the error as a tag and a traceback artifact), or
KILLED on Ctrl-C. A Hydra multirun gets a parent run, created before the first trial so that
parallel trials never race to create the database or the experiment.
"""
from __future__ import annotations

import logging
import subprocess
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lpr_sweep import hardware

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"
ROLE_TAG = "lpr_sweep.role"  # "sweep" for parents, "trial" for children
_REPO = Path(__file__).resolve().parents[1]
_VERSIONED = ("torch", "onnxruntime", "onnx", "apache-tvm", "openvino", "nncf", "torchao", "mlflow", "hydra-core", "numpy")


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # relative sqlite paths are taken from the launch directory
    artifact_root: str = "mlruns"
    experiment: str = "lpr_sweep"


def tracking_uri(cfg: TrackingConfig) -> str:
    prefix = "sqlite:///"
    if cfg.uri.startswith(prefix) and not cfg.uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(cfg.uri[len(prefix) :]).resolve())
    return cfg.uri


def experiment_id(cfg: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment, creating it on first use."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    found = mlflow.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    location = Path(cfg.artifact_root).resolve().as_uri() if "://" not in cfg.artifact_root else cfg.artifact_root
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # installed outside a checkout
        return "unknown"


def run_tags() -> dict[str, str]:
    tags = {"git_commit": git_commit(), **hardware.fingerprint()}
    for package in _VERSIONED:
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "not-installed"
    return tags


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): str(tree)}


@contextmanager
def trial(cfg: TrackingConfig, *, run_name: str, params: dict[str, Any], parent_run_id: str | None) -> Iterator[Any]:
    import mlflow

    exp = experiment_id(cfg)
    run = mlflow.start_run(
        experiment_id=exp, run_name=run_name, parent_run_id=parent_run_id, tags={**run_tags(), ROLE_TAG: "trial"}
    )
    try:
        mlflow.log_params(params)
        yield run
    except KeyboardInterrupt:
        mlflow.set_tag("error", "KeyboardInterrupt: interrupted by the user")
        mlflow.end_run("KILLED")
        raise
    except BaseException as e:
        mlflow.set_tag("error", f"{type(e).__name__}: {e}"[:4000])
        mlflow.log_text(traceback.format_exc(), "error.txt")
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def parent_run_id() -> str | None:
    """The sweep's parent run when this process runs a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = Path(HydraConfig.get().sweep.dir) / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


def _config_of(config: DictConfig) -> TrackingConfig:
    return TrackingConfig(**OmegaConf.to_container(config.tracking, resolve=True))


class SweepCallback(Callback):
    """Opens the parent run before the first trial and closes it with the sweep's outcome."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow import MlflowClient

        exp = experiment_id(_config_of(config))
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tags = {**run_tags(), ROLE_TAG: "sweep", "sweep_dir": str(sweep_dir.resolve())}
        tags["sweep_overrides"] = " ".join(config.hydra.overrides.task)
        run = MlflowClient().create_run(exp, run_name=f"sweep {sweep_dir.name}", tags=tags)
        (sweep_dir / PARENT_FILE).write_text(run.info.run_id)
        log.info("sweep parent run %s in experiment %s", run.info.run_id, config.tracking.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow import MlflowClient

        exp = experiment_id(_config_of(config))
        parent = (Path(config.hydra.sweep.dir) / PARENT_FILE).read_text().strip()
        client = MlflowClient()
        children = client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
        failed = [r for r in children if r.info.status != "FINISHED"]
        client.log_metric(parent, "n_trials", len(children))
        client.log_metric(parent, "n_failed", len(failed))
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
        if failed:
            names = ", ".join(f"{r.info.run_name} ({r.data.tags.get('error', r.info.status)})" for r in failed)
            # SystemExit, not an exception: Hydra would turn an exception here into a warning and exit 0.
            raise SystemExit(f"error: {len(failed)} of {len(children)} trials failed: {names}")
