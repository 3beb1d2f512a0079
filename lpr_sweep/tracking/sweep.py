"""The sweep's parent run: opened before the first trial, closed with the sweep's outcome.

It is created before the first trial so that parallel trials never race to create the database or
the experiment; if the sweep is interrupted, the parent and any trial still RUNNING under it are
marked KILLED on the way out.
"""
from __future__ import annotations

import atexit
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lpr_sweep import ConfigError
from lpr_sweep.signals import handle_interrupts
from lpr_sweep.tracking import (
    PARENT_FILE, ROLE_TAG, TrackingConfig, experiment_id, latest_per_config, launch_dir, run_tags, tracking_uri,
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
        from mlflow import MlflowClient

        cfg = _config_of(config)
        try:
            exp = experiment_id(cfg)
        except ConfigError as e:  # Hydra would turn an exception here into a warning
            raise SystemExit(f"error: {e}") from None
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        overrides = " ".join(o for o in config.hydra.overrides.task if o.split("=")[0].lstrip("+~") != "resume")
        client = MlflowClient()
        parent = _resumable_parent(client, exp, overrides) if config.get("resume") else None
        if parent is not None:
            run_id = parent.info.run_id
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "sweep_dir", str(sweep_dir.resolve()))
            log.info("resuming sweep parent run %s", run_id)
        else:
            tags = {**run_tags(), ROLE_TAG: "sweep", "sweep_dir": str(sweep_dir.resolve()), "sweep_overrides": overrides,
                    "mlflow.note.content": f"`python -m lpr_sweep -m {' '.join(config.hydra.overrides.task)}`"}
            run_id = client.create_run(exp, run_name=f"sweep {sweep_dir.name}", tags=tags).info.run_id
            for override in config.hydra.overrides.task:  # the sweep's own settings, as the parent's params
                key, _, value = override.lstrip("+~").partition("=")
                client.log_param(run_id, key, value)
            log.info("sweep parent run %s in experiment %s", run_id, config.tracking.experiment)
        (sweep_dir / PARENT_FILE).write_text(run_id)
        handle_interrupts()
        atexit.register(_close_interrupted, cfg, run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow import MlflowClient

        exp = experiment_id(_config_of(config))
        parent = (Path(config.hydra.sweep.dir) / PARENT_FILE).read_text().strip()
        client = MlflowClient()
        children = latest_per_config(client.search_runs([exp], filter_string=f"tags.mlflow.parentRunId = '{parent}'"))
        failed = [r for r in children if r.info.status != "FINISHED"]
        client.log_metric(parent, "n_trials", len(children))
        client.log_metric(parent, "n_failed", len(failed))
        client.set_terminated(parent, "FAILED" if failed else "FINISHED")
        if failed:
            names = ", ".join(f"{r.info.run_name} ({r.data.tags.get('error', r.info.status)})" for r in failed)
            # SystemExit, not an exception: Hydra would turn an exception here into a warning and exit 0.
            raise SystemExit(f"error: {len(failed)} of {len(children)} trials failed: {names}")
