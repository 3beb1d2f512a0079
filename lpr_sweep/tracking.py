"""All MLflow calls live here: experiment set-up, one run per trial, one parent run per sweep.

A trial run always ends: FINISHED, FAILED (with the error as a tag and a traceback artifact), or
KILLED on Ctrl-C or SIGTERM. A Hydra multirun gets a parent run, created before the first trial
so that parallel trials never race to create the database or the experiment; if the sweep is
interrupted, the parent and any trial still RUNNING under it are marked KILLED on the way out.
SQLite stores wait up to a minute for a lock instead of failing, and a tracking server that does
not answer fails the trial within ``request_timeout_s``.
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import traceback
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lpr_sweep import ConfigError, hardware

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"
ROLE_TAG = "lpr_sweep.role"  # "sweep" for parents, "trial" for children
HASH_TAG = "lpr_sweep.config_hash"  # what resume=true matches finished trials by
_REPO = Path(__file__).resolve().parents[1]
_VERSIONED = ("torch", "onnx", "mlflow", "hydra-core", "numpy")  # a trial adds its runtime's and backend's


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # relative sqlite paths are taken from the launch directory
    artifact_root: str = "mlruns"  # empty: the server's own artifact store (tracking=server)
    experiment: str = "lpr_sweep"
    request_timeout_s: int = 10  # a tracking server that does not answer within this fails the trial


def launch_dir() -> Path:
    """Where the user launched: trials run elsewhere under Ray or SLURM, relative paths must not move."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def tracking_uri(cfg: TrackingConfig) -> str:
    prefix = "sqlite:///"
    if not cfg.uri.startswith(prefix):
        return cfg.uri
    path = cfg.uri[len(prefix) :]
    if not path.startswith("/"):
        path = str(launch_dir() / path)
    # Parallel trials share one SQLite file: wait for its lock instead of failing at once.
    return prefix + path + ("" if "?" in path else "?timeout=60")


def _check_server(uri: str, timeout_s: int) -> None:
    """Fail fast and clearly when a tracking server does not answer; MLflow would retry for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s).read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it (mlflow server --host 127.0.0.1 "
            f"--port 5000 --backend-store-uri sqlite:///mlflow.db) or fix tracking.uri / MLFLOW_TRACKING_URI"
        ) from None


def experiment_id(cfg: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment, creating it on first use."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    _check_server(uri, cfg.request_timeout_s)
    mlflow.set_tracking_uri(uri)
    found = mlflow.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    location = None  # a tracking server chooses its own artifact store
    if cfg.artifact_root:
        location = cfg.artifact_root if "://" in cfg.artifact_root else (launch_dir() / cfg.artifact_root).resolve().as_uri()
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except MlflowException:  # another process created it first
        found = mlflow.get_experiment_by_name(cfg.experiment)
        if found is None:
            raise
        return found.experiment_id


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO), "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # installed outside a checkout
        return "unknown"


def run_tags(packages: tuple[str, ...] = ()) -> dict[str, str]:
    tags = {"git_commit": git_commit(), **hardware.fingerprint()}
    for package in sorted({*_VERSIONED, *packages}):
        try:
            tags[f"version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            tags[f"version.{package}"] = "not-installed"
    return tags


def config_hash(resolved: dict) -> str:
    """What makes two trials the same: the config without where results go, where data sits, or caching."""
    import hashlib
    import json

    kept = {k: v for k, v in resolved.items() if k not in ("tracking", "resume", "cache")}
    kept["data"] = {k: v for k, v in kept.get("data", {}).items() if k != "root"}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:24]


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): str(tree)}


def finished_trial(cfg: TrackingConfig, config_hash: str) -> Any | None:
    """The latest FINISHED trial of the experiment run with this config hash, if any."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id(cfg)], f"tags.`{HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED'",
        order_by=["start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


_interrupted: list[str] = []  # the signal, once one arrived


def _interrupt(signum: int, frame: Any) -> None:
    _interrupted.append(signal.Signals(signum).name)
    raise KeyboardInterrupt(f"signal {_interrupted[0]}")


def handle_interrupts() -> None:
    """Let SIGTERM unwind like Ctrl-C, so runs get marked KILLED instead of staying RUNNING."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def check_interrupted() -> None:
    """Raise again if a signal came and some library swallowed its KeyboardInterrupt."""
    if _interrupted:
        raise KeyboardInterrupt(f"signal {_interrupted[0]}")


@contextmanager
def trial(cfg: TrackingConfig, *, run_name: str, params: dict[str, Any], parent_run_id: str | None,
          config_hash: str = "", packages: tuple[str, ...] = ()) -> Iterator[Any]:
    import mlflow

    exp = experiment_id(cfg)
    run = mlflow.start_run(
        experiment_id=exp, run_name=run_name, parent_run_id=parent_run_id,
        tags={**run_tags(packages), ROLE_TAG: "trial", HASH_TAG: config_hash},
    )
    try:
        mlflow.log_params(params)
        yield run
    except KeyboardInterrupt as e:
        mlflow.set_tag("error", f"KeyboardInterrupt: interrupted ({e or 'Ctrl-C'})")
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
            tags = {**run_tags(), ROLE_TAG: "sweep", "sweep_dir": str(sweep_dir.resolve()), "sweep_overrides": overrides}
            run_id = client.create_run(exp, run_name=f"sweep {sweep_dir.name}", tags=tags).info.run_id
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


def latest_per_config(runs: list[Any]) -> list[Any]:
    """Drop the runs a resumed sweep superseded: per config hash, a FINISHED run wins, then the latest."""
    best: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: (r.info.status == "FINISHED", r.info.start_time)):
        best[run.data.tags.get(HASH_TAG) or run.info.run_id] = run
    return list(best.values())
