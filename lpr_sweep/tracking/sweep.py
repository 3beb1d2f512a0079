"""The sweep's parent run: opened before the first trial, closed with the sweep's outcome.

It is created before the first trial so that parallel trials never race to create the database or
the experiment; if the sweep is interrupted, the parent and any trial still RUNNING under it are
marked KILLED on the way out.
"""
from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lpr_sweep import ConfigError
from lpr_sweep.signals import handle_interrupts
from lpr_sweep.tracking import (
    PARENT_FILE, REUSED_TAG, ROLE_TAG, UNRECORDED_FILE, TrackingConfig, experiment_id, launch_dir, run_tags, sweep_trials,
    tracking_uri,
)

log = logging.getLogger(__name__)


OWNER_TAG = "lpr_sweep.owner"  # on the parent run: the process that runs (or last ran) the sweep
_held: dict[str, IO[str]] = {}  # the sweeps this process owns: each lock is held until the process ends


def lock_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lpr_sweep" / "locks"


def claim(parent: str) -> str:
    """Own the sweep ``parent`` for as long as this process lives: an flock on a file named for it, which
    the kernel drops when the process dies, however it dies. SystemExit naming the owner when a live
    process on this host holds it. Returns the owner line this process wrote."""
    folder = lock_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / f"{parent}.lock", "a+", encoding="utf-8")
    except OSError as e:
        raise SystemExit(f"error: cannot create the sweep lock in {folder} ({e.strerror or e}); point XDG_CACHE_HOME at a "
                         "writable folder") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "another process"
        f.close()
        raise SystemExit(f"error: sweep {parent} is still running ({owner}); wait for it or stop it, then run the same "
                         "command with resume=true") from None
    owner = f"pid {os.getpid()} on {socket.gethostname()}"
    f.seek(0)
    f.truncate()
    f.write(owner + "\n")
    f.flush()
    _held[parent] = f
    return owner


def owner(parent: str) -> str | None:
    """The live process that holds sweep ``parent`` on this host ("pid N on host"), or None."""
    path = lock_dir() / f"{parent}.lock"
    if not path.is_file():
        return None
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            return f.read().strip() or "another process"
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def parent_run_id() -> str | None:
    """The sweep's parent run when this process runs a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    path = launch_dir() / HydraConfig.get().sweep.dir / PARENT_FILE
    return path.read_text().strip() if path.is_file() else None


def link_reused(cfg: TrackingConfig, run_id: str, parent: str) -> None:
    """Count a finished trial of an earlier sweep as this sweep's own (resume=true skipped rerunning it)."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri(cfg)).set_tag(run_id, REUSED_TAG + parent, "1")


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
    """At exit: a parent still RUNNING means the sweep did not reach its end. After a signal it and its
    running trials are KILLED; after an error, FAILED. Resume is offered only when it can help."""
    from mlflow import MlflowClient

    from lpr_sweep import signals

    try:
        client = MlflowClient(tracking_uri(cfg))
        if client.get_run(parent).info.status != "RUNNING":
            return
        exp = client.get_run(parent).info.experiment_id
        signal_name = signals.received()
        status = "KILLED" if signal_name else "FAILED"
        children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
        for run in children:
            if run.info.status == "RUNNING":
                client.set_tag(run.info.run_id, "error", f"KeyboardInterrupt: the sweep was interrupted by {signal_name}"
                               if signal_name else "the sweep stopped on an error while this trial ran")
                client.set_terminated(run.info.run_id, status)
        client.set_terminated(parent, status)
        if signal_name:
            log.warning("sweep interrupted by %s: parent run %s marked KILLED; %s", signal_name, parent,
                        "`resume=true` re-runs what did not finish" if children else "no trial had started")
        else:
            log.error("sweep stopped on an error before its end: parent run %s marked FAILED%s", parent,
                      "; after fixing the error, `resume=true` re-runs what did not finish" if children else "; no trial had run")
    except Exception as e:  # exiting anyway: say what could not be recorded
        log.error("could not close the unfinished sweep %s: %s", parent, e)


def close_interrupted(tracking: DictConfig) -> None:
    """The sweep was interrupted in this process: mark its parent and RUNNING trials KILLED now."""
    parent = parent_run_id()
    if parent:
        _close_interrupted(TrackingConfig(**OmegaConf.to_container(tracking, resolve=True)), parent)


def _command(config: Any) -> list[str]:
    """The sweep's command line: the task's overrides, then the user's Hydra ones (hydra/sweeper=search,
    hydra.sweeper.n_trials=...), without the mode Hydra sets for -m itself."""
    extra = [o for o in config.hydra.overrides.get("hydra", []) if not o.startswith("hydra.mode=")]
    return [*config.hydra.overrides.task, *extra]


def _resumable_parent(client: Any, exp: str, overrides: str) -> Any | None:
    runs = client.search_runs(
        [exp], f"tags.`{ROLE_TAG}` = 'sweep' and attributes.status != 'FINISHED'", order_by=["start_time DESC"], max_results=50
    )
    return next((r for r in runs if r.data.tags.get("sweep_overrides") == overrides), None)


class SweepCallback(Callback):
    """Opens the parent run before the first trial and closes it with the sweep's outcome.

    With ``resume=true`` it reopens the latest unfinished parent run of the same command line, so a
    resumed sweep stays one sweep; trials skip themselves when their config already FINISHED. The
    process that opens a parent owns it (``claim``): a resume while that process lives is refused,
    and a resume after it died takes over. The lock lives on this host (under ``XDG_CACHE_HOME``);
    Ray and SLURM workers run trials for the owner and claim nothing.
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
            folder_claim = open(sweep_dir / PARENT_FILE, "x")
        except FileExistsError:
            if not config.get("resume"):
                raise SystemExit(f"error: sweep folder {sweep_dir} is already used by another sweep; give this one its own "
                                 "hydra.sweep.dir=..., or add resume=true to continue that sweep") from None
            # resuming in the same folder: it will name the resumed parent, once this process owns it
            folder_claim = open(sweep_dir / PARENT_FILE, "r+")
        with folder_claim:
            try:
                run_id = self._open_parent(config, exp, sweep_dir)
            except SystemExit:
                raise
            except Exception as e:  # Hydra would turn it into a warning and run every trial without a parent
                raise SystemExit(f"error: the sweep's parent run could not be recorded ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200]}); nothing ran") from None
            folder_claim.seek(0)
            folder_claim.truncate()
            folder_claim.write(run_id)
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
            # before anything is marked: a live owner's RUNNING trials are not lost, and they must not run twice
            client.set_tag(run_id, OWNER_TAG, claim(run_id))
            client.update_run(run_id, status="RUNNING")
            client.set_tag(run_id, "sweep_dir", str(sweep_dir.resolve()))
            for run in client.search_runs([exp], f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"):
                # left RUNNING by a process that was killed outright: it did not finish
                client.set_tag(run.info.run_id, "error", "the process running it died; resume re-runs it")
                client.set_terminated(run.info.run_id, "KILLED")
            log.info("resuming sweep parent run %s", run_id)
        else:
            tags = {**run_tags(), ROLE_TAG: "sweep", "sweep_dir": str(sweep_dir.resolve()), "sweep_overrides": overrides,
                    "mlflow.note.content": f"`python -m lpr_sweep -m {' '.join(_command(config))}`"}
            run_id = client.create_run(exp, run_name=f"sweep {sweep_dir.name}", tags=tags).info.run_id
            client.set_tag(run_id, OWNER_TAG, claim(run_id))
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
            children = sweep_trials(client, exp, parent)
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
