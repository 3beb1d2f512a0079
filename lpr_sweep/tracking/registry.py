"""Reading a sweep back from MLflow, and registering its champion's logged model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from lpr_sweep.tracking import ROLE_TAG, TrackingConfig, sweep_trials, tracking_uri

SWEEP_RUN_TAG = "sweep_run_id"  # on a registered version: the sweep (parent run) that registered it
TRIAL_RUN_TAG = "trial_run_id"  # ... and the trial run whose logged model it is


def register_model(source: str, name: str, tags: dict[str, str], description: str) -> str:
    """A registry version of a logged model (``models:/m-...``), so ``models:/name@alias`` loads and serves."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(source, name, tags=tags)
    MlflowClient().update_model_version(name, version.version, description=description)
    return str(version.version)


def check_model_files(source: str) -> None:
    """LookupError with the fix when a logged model's files are gone from the artifact store: a version
    registered on them would load nowhere."""
    import tempfile

    import mlflow

    try:
        location = mlflow.get_logged_model(source.removeprefix("models:/")).artifact_location
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=tmp)
    except Exception as e:
        raise LookupError(f"the logged model {source} cannot be read from its artifact store ({str(e).strip().splitlines()[0][:160]}); "
                          "restore the artifact folder, or rerun that trial with resume=false") from None


def set_champion(name: str, alias: str, version: str) -> None:
    """Point ``name@alias`` at ``version``, and move the run tag ``lpr_sweep.<alias>=true`` from the
    trial run that held it to this version's, so the runs table filters on it."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    held = aliased(name, alias)
    client.set_registered_model_alias(name, alias, version)
    tag = f"lpr_sweep.{alias}"
    if held and held[1] is not None and held[0] != version:
        try:
            client.delete_tag(held[1].info.run_id, tag)
        except MlflowException:  # that run was deleted meanwhile: nothing left to untag
            pass
    run_id = client.get_model_version(name, version).tags.get(TRIAL_RUN_TAG)
    if run_id:
        client.set_tag(run_id, tag, "true")


BEST_TAG = "lpr_sweep.best_of_sweep"  # on a trial: the parent run id of the sweep whose report chose it


def mark_best(parent_id: str, trial_run_id: str, trial_name: str, earlier: list[str]) -> None:
    """The sweep's decision on its runs: the parent names its best trial, that trial carries the
    sweep's id, and ``earlier`` (trials an earlier report of this sweep chose) no longer do."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_tag(parent_id, "lpr_sweep.best_trial", trial_name)
    client.set_tag(parent_id, "lpr_sweep.best_run_id", trial_run_id)
    for run_id in earlier:
        if run_id != trial_run_id:
            client.delete_tag(run_id, BEST_TAG)
    client.set_tag(trial_run_id, BEST_TAG, parent_id)


def describe(name: str, description: str, tags: dict[str, str]) -> None:
    """The registered model's own description and tags: which version is champion, and why."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.update_registered_model(name, description=description)
    for key, value in tags.items():
        client.set_registered_model_tag(name, key, value)


def aliased(name: str, alias: str) -> tuple[str, Any | None] | None:
    """(version, the trial run it came from, or None when that run is gone) behind ``name@alias``;
    None when there is no such alias (or no such model)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    run_id = version.tags.get(TRIAL_RUN_TAG) or version.run_id
    try:
        return str(version.version), client.get_run(run_id) if run_id else None
    except MlflowException:
        return str(version.version), None


def sweep_version(name: str, parent_id: str) -> Any | None:
    """The version this sweep already registered, if any: a sweep registers one at most."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get(SWEEP_RUN_TAG) == parent_id), None)


def read_sweep(cfg: TrackingConfig, sweep: str = "latest") -> tuple[str, str | None, list[Any], list[str]]:
    """(parent run id, sweep folder, the trial runs, each config once, the ids of newer sweeps skipped
    because they hold no trial); ``sweep`` is a parent run id or ``latest``, the newest sweep that
    holds a trial. LookupError with the fix when there is none."""
    from mlflow import MlflowClient

    exp = _experiment(cfg)
    client = MlflowClient()

    def trials(parent_id: str) -> list[Any]:
        return sweep_trials(client, exp, parent_id)

    if sweep == "latest":
        parents = client.search_runs([exp], f"tags.`{ROLE_TAG}` = 'sweep'", order_by=["start_time DESC"], max_results=100)
        if not parents:
            raise LookupError(f"experiment {cfg.experiment!r} holds no sweep; run `python -m lpr_sweep -m ...` first")
        skipped = []
        for parent in parents:  # a sweep stopped before its first trial leaves an empty parent: skip it
            runs = trials(parent.info.run_id)
            if runs:
                return parent.info.run_id, parent.data.tags.get("sweep_dir"), runs, skipped
            skipped.append(parent.info.run_id)
        raise LookupError(f"no sweep in experiment {cfg.experiment!r} holds a trial ({len(skipped)} empty); run "
                          "`python -m lpr_sweep -m ...` first")
    try:
        parent = client.get_run(sweep)
    except Exception:
        raise LookupError(f"no run {sweep!r} at {cfg.uri}; pass the parent run id shown by the sweep") from None
    runs = trials(parent.info.run_id)
    if not runs:
        raise LookupError(f"sweep {parent.info.run_id} has no trials in experiment {cfg.experiment!r}; pass --sweep <parent run id>")
    return parent.info.run_id, parent.data.tags.get("sweep_dir"), runs, []


def _experiment(cfg: TrackingConfig) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cfg))
    try:
        experiment = mlflow.get_experiment_by_name(cfg.experiment)
    except Exception as e:  # a corrupt or foreign file where the store should be, a server that fails
        raise LookupError(f"MLflow store {cfg.uri} cannot be read ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}); "
                          "if it is corrupt, restore it from a backup or pass --tracking-uri of another store") from None
    if experiment is None:
        raise LookupError(f"no experiment {cfg.experiment!r} at {cfg.uri}; run `python -m lpr_sweep -m ...` first")
    return experiment.experiment_id


def log_metrics(run_id: str, metrics: dict[str, float]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value))


def log_files(run_id: str, paths: list[Path]) -> None:
    from mlflow import MlflowClient

    for path in paths:
        MlflowClient().log_artifact(run_id, str(path))
