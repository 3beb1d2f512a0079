"""What a launcher that runs trials on other machines needs, checked before the first trial.

Only Ray is checked here (SLURM jobs start later, in a queue). A Ray cluster (``hydra/launcher=
ray_cluster``, or ``hydra/launcher=ray`` with ``ray.init.address``) needs:
- a tracking server (``tracking=server``): a SQLite file is not shared between machines;
- an artifact store every worker can write: a server started with ``--serve-artifacts`` (artifact
  URIs ``mlflow-artifacts:/``) or a remote store, not a path on the server's own disk;
- a connection this driver may open: Ray 2.60 authenticates with a token (``RAY_AUTH_MODE=token``,
  ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``, the same on every node and on this driver).
The data root and the stage cache are verified by each trial where it runs (checksums on that node).

Ray rewrites a loopback address (``127.0.0.1``) into the machine's network address, so a cluster on
one machine would listen on the network; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is the switch that
keeps it on loopback (``ray._private.services.get_node_ip_address``). It is set here for a local
Ray instance and for a cluster addressed on loopback.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf

from lpr_sweep import ConfigError

LOOPBACK = ("127.", "localhost")


def is_ray(config: DictConfig) -> bool:
    return str(config.hydra.launcher.get("_target_", "")).endswith("RayLauncher")


def check(config: DictConfig, tracking_uri: str, artifact_location: str) -> None:
    """Raise ConfigError with the fix, or connect this driver to the Ray cluster."""
    if not is_ray(config):
        return
    init = OmegaConf.to_container(config.hydra.launcher.ray.init, resolve=True)
    address = init.get("address")
    if not address or str(address).startswith(LOOPBACK):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # inherited by the local instance's processes
    if not address:
        return
    if not tracking_uri.startswith(("http://", "https://")):
        raise ConfigError(f"a Ray cluster's trials run on other machines, which cannot write to {tracking_uri}; "
                          "use tracking=server with MLFLOW_TRACKING_URI=http://<server>:5000")
    if urlparse(artifact_location).scheme in ("", "file"):
        raise ConfigError(f"the tracking server keeps artifacts at {artifact_location}, a path other machines cannot "
                          "write; start it with `mlflow server --serve-artifacts --artifacts-destination <dir>` and a new "
                          "tracking.experiment, or give the experiment a remote artifact store")
    if init.get("object_store_memory", "the launcher's default") is not None:  # absent: the launcher sets one
        raise ConfigError("ray.init refuses object_store_memory when it joins a running cluster; use "
                          "hydra/launcher=ray_cluster, or add +hydra.launcher.ray.init.object_store_memory=null")
    connect(address, init)


def connect(address: str, init: dict[str, Any]) -> None:
    """Join the cluster now, so that a refusal is one line here rather than a traceback in the launcher
    (which then finds Ray initialised and goes on)."""
    import ray

    if ray.is_initialized():
        return
    fix = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH=<the token file the head was started with> here, "
           "as on every node")
    try:
        ray.init(**{k: v for k, v in init.items() if v is not None}, log_to_driver=True)
    except ray.exceptions.AuthenticationError:
        raise ConfigError(f"the Ray cluster at {address} wants a token and this driver has none; {fix}") from None
    except ConnectionError as e:
        if "InvalidAuthToken" in f"{e} {e.__cause__}":
            raise ConfigError(f"the Ray cluster at {address} refused this driver's token; {fix}") from None
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({str(e).splitlines()[0][:160]}); "
                          "check the address and that `ray start --head` runs there") from None
