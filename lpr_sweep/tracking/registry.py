"""Reading a sweep back from MLflow, and registering its champion's logged model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lpr_sweep.tracking import ROLE_TAG, TrackingConfig, latest_per_config, tracking_uri


def register_model(source: str, name: str, tags: dict[str, str], description: str) -> str:
    """A registry version of a logged model (``models:/m-...``), so ``models:/name@alias`` loads and serves."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(source, name, tags=tags)
    MlflowClient().update_model_version(name, version.version, description=description)
    return version.version


def set_champion(name: str, alias: str, version: str) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_registered_model_alias(name, alias, version)


def read_sweep(cfg: TrackingConfig, sweep: str = "latest") -> tuple[str, str | None, list[Any]]:
    """(parent run id, sweep folder, the trial runs, each config once); ``sweep`` is a parent run id or
    ``latest``. LookupError with the fix when there is none."""
    from mlflow import MlflowClient

    exp = _experiment(cfg)
    client = MlflowClient()
    if sweep == "latest":
        parents = client.search_runs([exp], f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["start_time DESC"], max_results=1)
        if not parents:
            raise LookupError(f"experiment {cfg.experiment!r} holds no sweep; run `python -m lpr_sweep -m ...` first")
        parent = parents[0]
    else:
        try:
            parent = client.get_run(sweep)
        except Exception:
            raise LookupError(f"no run {sweep!r} at {cfg.uri}; pass the parent run id shown by the sweep") from None
    # a resumed sweep re-ran its interrupted trials: show each config once
    runs = latest_per_config(client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=5000))
    if not runs:
        raise LookupError(f"sweep {parent.info.run_id} has no trials in experiment {cfg.experiment!r}; pass --sweep <parent run id>")
    return parent.info.run_id, parent.data.tags.get("sweep_dir"), runs


def _experiment(cfg: TrackingConfig) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        raise LookupError(f"no experiment {cfg.experiment!r} at {cfg.uri}; run `python -m lpr_sweep -m ...` first")
    return experiment.experiment_id


def log_files(run_id: str, paths: list[Path]) -> None:
    from mlflow import MlflowClient

    for path in paths:
        MlflowClient().log_artifact(run_id, str(path))
