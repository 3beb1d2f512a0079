"""Every MLflow call lives in this package: the store and experiment here, then
- ``record``: one run per trial, and everything a trial logs (params, datasets, metrics, its model);
- ``sweep``: one parent run per Hydra multirun, closed with the sweep's outcome;
- ``registry``: reading a sweep back, and registering its champion;
- ``deploy``: the pyfunc every trial logs, which reads plates from images with what the trial measured.

SQLite stores wait up to a minute for a lock instead of failing, and a tracking server that does
not answer fails the trial within ``request_timeout_s``.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from lpr_sweep import ConfigError, hardware

log = logging.getLogger(__name__)
PARENT_FILE = "mlflow_parent_run_id"
UNRECORDED_FILE = "unrecorded_trials.jsonl"  # jobs of a sweep that failed before their run existed
ROLE_TAG = "lpr_sweep.role"  # "sweep" for parents, "trial" for children
HASH_TAG = "lpr_sweep.config_hash"  # what resume=true matches finished trials by
CONTRACT = {"accuracy", "speedup", "speedup_ci_low", "speedup_ci_high", "size_file_bytes"}  # what a finished trial holds
MODEL_TAG = "lpr_sweep.model_uri"  # the trial's logged MLflow Model (models:/m-...)
REUSED_TAG = "lpr_sweep.reused_by."  # + a parent run id: a finished trial that a resumed sweep took instead of rerunning
OVERRIDES_TAG = "lpr_sweep.overrides"  # every override of the trial but the paths; its run name holds only the swept values
_REPO = Path(__file__).resolve().parents[2]
_VERSIONED = ("torch", "onnx", "mlflow", "hydra-core", "numpy")  # a trial adds its runtime's and backend's


@dataclass
class TrackingConfig:
    uri: str = "sqlite:///mlflow.db"  # relative sqlite paths are taken from the launch directory
    artifact_root: str = "mlruns"  # empty: the server's own artifact store (tracking=server)
    experiment: str = "lpr_sweep"
    request_timeout_s: int = 10  # a tracking server that does not answer within this fails the trial
    run_name: str = ""  # set per job by the sweepers (the swept values); empty: the overrides, or the preset


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
        from urllib.parse import urlparse

        reason = getattr(e, "reason", e)
        where = urlparse(uri)
        raise ConfigError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it (mlflow server --host {where.hostname or '127.0.0.1'} "
            f"--port {where.port or 5000} --backend-store-uri sqlite:///mlflow.db) or fix tracking.uri / MLFLOW_TRACKING_URI"
        ) from None


def experiment_id(cfg: TrackingConfig) -> str:
    """Point MLflow at the store and return the experiment, creating it on first use."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(cfg)
    _check_server(uri, cfg.request_timeout_s)
    mlflow.set_tracking_uri(uri)
    try:
        with _store_lock(uri):  # two processes creating one SQLite schema at once would lose one's records
            found = mlflow.get_experiment_by_name(cfg.experiment)
            if found is not None and found.lifecycle_stage == "deleted":
                raise ConfigError(f"experiment {cfg.experiment!r} in {cfg.uri} is deleted; restore it (mlflow experiments restore "
                                  f"--experiment-id {found.experiment_id}) or record elsewhere with tracking.experiment=<new name>")
            if found is not None:
                _check_artifacts(found.artifact_location, cfg)
                return found.experiment_id
            location = None  # a tracking server chooses its own artifact store
            if cfg.artifact_root:
                location = cfg.artifact_root if "://" in cfg.artifact_root else (launch_dir() / cfg.artifact_root).resolve().as_uri()
                _check_artifacts(location, cfg)
            try:
                return mlflow.create_experiment(cfg.experiment, artifact_location=location)
            except MlflowException:  # another process created it first
                found = mlflow.get_experiment_by_name(cfg.experiment)
                if found is None:
                    raise
                return found.experiment_id
    except ConfigError:
        raise
    except Exception as e:  # a corrupt, read-only or foreign file where the store should be
        raise ConfigError(
            f"MLflow store {cfg.uri} cannot be used ({type(e).__name__}: {str(e).splitlines()[0][:200]}); if it is read-only, "
            "make it writable; if it is corrupt, move it aside (a new one is created); or point tracking.uri elsewhere"
        ) from None


def _check_artifacts(location: str, cfg: TrackingConfig) -> None:
    """A local artifact store must take files before a trial spends minutes on results it cannot keep."""
    from urllib.parse import unquote, urlparse

    if not location or not location.startswith(("file:", "/")):
        return  # a server's or a cloud store: it answers for itself
    folder = Path(unquote(urlparse(location).path) if location.startswith("file:") else location)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"MLflow artifact store {folder} (experiment {cfg.experiment!r}) cannot be written ({e.strerror or e}); "
                          "make it writable, or use another experiment (tracking.experiment=name) with a writable "
                          "tracking.artifact_root") from None


@contextlib.contextmanager
def _store_lock(uri: str):
    """An exclusive lock beside a SQLite store while it is opened (and maybe created); other stores need none."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///"):].split("?")[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def config_hash(resolved: dict, data_identity: str = "") -> str:
    """What makes two trials the same: the config without where results go or caching, and the data's
    identity (the digest of its SHA256SUMS) instead of where it sits."""
    import hashlib
    import json

    kept = {k: v for k, v in resolved.items() if k not in ("tracking", "resume", "cache")}
    kept["data"] = {k: v for k, v in kept.get("data", {}).items() if k != "root"}
    kept["data_identity"] = data_identity
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:24]


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): str(tree)}


def finished_trial(cfg: TrackingConfig, config_hash: str) -> Any | None:
    """The latest trial of the experiment with this config hash that FINISHED with every contracted
    metric, if any: a run closed FINISHED without them (an older bug, a hand edit) is not done."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs(
        [experiment_id(cfg)], f"tags.`{HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED'",
        order_by=["start_time DESC"], max_results=20,
    )
    return next((r for r in runs if CONTRACT <= set(r.data.metrics)), None)


def latest_per_config(runs: list[Any]) -> list[Any]:
    """Drop the runs a resumed sweep superseded: per config hash, a FINISHED run wins, then the latest."""
    best: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: (r.info.status == "FINISHED", r.info.start_time)):
        best[run.data.tags.get(HASH_TAG) or run.info.run_id] = run
    return list(best.values())


def sweep_trials(client: Any, exp: str, parent: str) -> list[Any]:
    """A sweep's trials, each config once: its own children, and the finished trials of earlier sweeps
    that it reused under ``resume=true`` (tagged ``REUSED_TAG`` + its id)."""
    own = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)
    ids = {r.info.run_id for r in own}
    reused = client.search_runs([exp], f"tags.`{REUSED_TAG}{parent}` = '1'", max_results=5000)
    return latest_per_config(own + [r for r in reused if r.info.run_id not in ids])


def load_model(uri: str, tracking: str) -> Any:
    """A logged model as a pyfunc; LookupError with the fix when it is not there."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking)
    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        raise LookupError(f"cannot load model {uri} from {tracking} ({str(e).splitlines()[0]}); run `make sweep` "
                          "(it registers the champion) or pass --model with a trial run's tag lpr_sweep.model_uri (models:/m-...)") from None


UI_TRIALS = "searchFilter=tags.%60lpr_sweep.role%60%20%3D%20%27trial%27&orderByKey=metrics.%60speedup%60&orderByAsc=false"


def ui_url(cfg: TrackingConfig, port: int = 5000) -> str:
    """The MLflow UI's runs table for the experiment, trials only, fastest first (the UI would open on
    its GenAI overview, and show one row per sweep)."""
    base = f"http://127.0.0.1:{port}"
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):].split("?")[0]).is_file():
        return base  # no store yet (and looking would create one)
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri(cfg))
        found = mlflow.get_experiment_by_name(cfg.experiment)
    except Exception:  # no store yet: the plain address still opens the UI
        found = None
    return f"{base}/#/experiments/{found.experiment_id}/runs?workflowType=machine_learning&{UI_TRIALS}" if found else base
