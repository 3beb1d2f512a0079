"""The sweep's parent run: opened before the first trial, closed with the sweep's outcome.

It is created before the first trial so that parallel trials never race to create the database or
the experiment; if the sweep is interrupted, the parent and any trial still RUNNING under it are
marked KILLED on the way out.
"""
from __future__ import annotations

import atexit
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lpr_sweep import ConfigError
from lpr_sweep.signals import handle_interrupts
from lpr_sweep.tracking import (
    PARENT_FILE, ROLE_TAG, UNRECORDED_FILE, TrackingConfig, experiment_id, latest_per_config, launch_dir, run_tags, tracking_uri,
)

log = logging.getLogger(__name__)


def parent_run_id() -> str | None:
    """The sweep's parent run when this process runs a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = launch_dir() / HydraConfig.get().sweep.dir / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


def record_unrecorded(name: str, error: BaseException) -> None:
    """A job of this sweep failed before its MLflow run existed (a refused config, a dead store):
    note it beside the parent run's id, so the sweep's end counts it instead of exiting 0."""
    from hydra.core.hydra_config import HydraConfig

    path = launch_dir() / HydraConfig.get().sweep.dir / UNRECORDED_FILE
    with open(path, "a", encoding="utf-8") as f:  # one short line per write: appends from parallel jobs do not mix
        f.write(json.dumps({"trial": name, "error": f"{type(error).__name__}: {error}"[:500]}) + "\n")


def _unrecorded(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / UNRECORDED_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line] if path.is_file() else []


def _config_of(config: DictConfig) -> TrackingConfig:
    return TrackingConfig(**OmegaConf.to_container(config.tracking, resolve=True))


def _close_interrupted(cfg: TrackingConfig, parent: str) -> None:
    """At exit: a parent still RUNNING means the sweep was interrupted; close it and its trials."""
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri(cfg))
        if client.get_run(parent).info.status != "RUNNING":
            return
        exp = client.get_run(parent).info.experiment_id
        for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"):
            client.set_tag(run.info.run_id, "error", "KeyboardInterrupt: the sweep was interrupted")
            client.set_terminated(run.info.run_id, "KILLED")
        client.set_terminated(parent, "KILLED")
        log.warning("sweep interrupted: parent run %s marked KILLED; `resume=true` re-runs what did not finish", parent)
    except Exception as e:  # exiting anyway: say what could not be recorded
        log.error("could not mark the interrupted sweep %s KILLED: %s", parent, e)


def close_interrupted(tracking: DictConfig) -> None:
    """The sweep was interrupted in this process: mark its parent and RUNNING trials KILLED now."""
    parent = parent_run_id()
    if parent:
        _close_interrupted(TrackingConfig(**OmegaConf.to_container(tracking, resolve=True)), parent)


def _resumable_parent(client: Any, exp: str, overrides: str) -> Any | None:
    runs = client.search_runs(
        [exp], f"tags.`{ROLE_TAG}` = 'sweep' and attributes.status != 'FINISHED'", order_by=["start_time DESC"], max_results=50
    )
    return next((r for r in runs if r.data.tags.get("sweep_overrides") == overrides), None)


class SweepCallback(Callback):
    """Opens the parent run before the first trial and closes it with the sweep's outcome.

    With ``resume=true`` it reopens the latest unfinished parent run of the same command line, so a
    resumed sweep stays one sweep; trials skip themselves when their config already FINISHED.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:

        import mlflow

        from lpr_sweep import launcher

        cfg = _config_of(config)
        try:
            exp = experiment_id(cfg)
            launcher.check(config, tracking_uri(cfg), mlflow.get_experiment(exp).artifact_location)
        except ConfigError as e:  # Hydra would turn an exception here into a warning
            raise SystemExit(f"error: {e}") from None
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:  # claimed before anything is recorded: two sweeps must never share a folder and a parent
            claim = open(sweep_dir / PARENT_FILE, "x")
        except FileExistsError:
            if not config.get("resume"):
                raise SystemExit(f"error: sweep folder {sweep_dir} is already used by another sweep; give this one its own "
                                 "hydra.sweep.dir=..., or add resume=true to continue that sweep") from None
            claim = open(sweep_dir / PARENT_FILE, "w")  # resuming in the same folder: it will name the resumed parent
        with claim:
            try:
                run_id = self._open_parent(config, exp, sweep_dir)
            except Exception as e:  # Hydra would turn it into a warning and run every trial without a parent
                raise SystemExit(f"error: the sweep's parent run could not be recorded ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200]}); nothing ran") from None
            claim.write(run_id)
        handle_interrupts()
        atexit.register(_close_interrupted, cfg, run_id)

    def _open_parent(self, config: DictConfig, exp: str, sweep_dir: Path) -> str:
        """The parent run: the resumed one, or a new one with the sweep's command and settings."""
        from mlflow import MlflowClient

        overrides = " ".join(o for o in config.hydra.overrides.task if o.split("=")[0].lstrip("+~") != "resume")
        client = MlflowClient()
        parent = _resumable_parent(client, exp, overrides) if config.get("resume") else None
        if parent is not None:
            run_id = parent.info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "sweep_dir", str(sweep_dir.resolve()))
            for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"):
                # left RUNNING by a process that was killed outright: it did not finish
                client.set_tag(run.info.run_id, "error", "the process running it died; resume re-runs it")
                client.set_terminated(run.info.run_id, "KILLED")
            log.info("resuming sweep parent run %s", run_id)
        else:
            tags = {**run_tags(), ROLE_TAG: "sweep", "sweep_dir": str(sweep_dir.resolve()), "sweep_overrides": overrides,
                    "mlflow.note.content": f"`python -m lpr_sweep -m {' '.join(config.hydra.overrides.task)}`"}
            run_id = client.create_run(exp, run_name=f"sweep {sweep_dir.name}", tags=tags).info.run_id
            # The sweep's own settings as the parent's params; a key given twice keeps its last value, as Hydra does.
            settings = dict(o.lstrip("+~").partition("=")[::2] for o in config.hydra.overrides.task)
            for key, value in settings.items():
                client.log_param(run_id, key, value)
            log.info("sweep parent run %s in experiment %s", run_id, config.tracking.experiment)
        return run_id

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # SystemExit, not an exception: Hydra would turn an exception here into a warning and exit 0.
        sweep_dir = Path(config.hydra.sweep.dir)
        unrecorded = _unrecorded(sweep_dir)
        try:
            from mlflow import MlflowClient

            exp = experiment_id(_config_of(config))
            parent = (sweep_dir / PARENT_FILE).read_text().strip()
            client = MlflowClient()
            for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"):
                # Every job has returned, so nothing runs it: its process died (a lost node, a kill -9).
                client.set_tag(run.info.run_id, "error", "LostWorker: the process running it died before it finished")
                client.set_terminated(run.info.run_id, "FAILED")
            children = latest_per_config(client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'"))
            failed = [r for r in children if r.info.status != "FINISHED"]
            client.log_metric(parent, "n_trials", len(children) + len(unrecorded))
            client.log_metric(parent, "n_failed", len(failed))
            client.log_metric(parent, "n_unrecorded", len(unrecorded))
            client.set_terminated(parent, "FAILED" if failed or unrecorded else "FINISHED")
        except Exception as e:
            raise SystemExit(f"error: the sweep's end could not be recorded ({type(e).__name__}: {str(e).splitlines()[0]}); "
                             "its trials may be incomplete: rerun the same command with resume=true") from None
        summary = f"{len(children) - len(failed)} trials finished, {len(failed)} failed, {len(unrecorded)} never recorded"
        if failed or unrecorded:
            names = [f"{r.info.run_name} ({r.data.tags.get('error', r.info.status)})" for r in failed]
            names += [f"{u['trial']} ({u['error']}; no run)" for u in unrecorded]
            raise SystemExit(f"error: {summary}: {', '.join(names)}")
        log.info("sweep done: %s", summary)
