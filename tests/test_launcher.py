"""Ray clusters: the pre-flight refusals, and a real two-node cluster on one machine, all on loopback."""
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from conftest import REPO, TINY, cli, free_port
from lpr_sweep import ConfigError, launcher, tracking

RAY = str(Path(sys.executable).with_name("ray"))
FOUR = "prune.ratio=0.1,0.2,0.3,0.4"


def _hydra(*overrides):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


CLUSTER = ["hydra/launcher=ray_cluster", "hydra.launcher.ray.init.address=127.0.0.1:1"]


@pytest.mark.parametrize("overrides, uri, artifacts, message", [
    (CLUSTER, "sqlite:///mlflow.db", "mlflow-artifacts:/1", "cannot write to sqlite:///mlflow.db; use tracking=server"),
    (CLUSTER, "http://127.0.0.1:5000", "/srv/mlruns/1", "a path other machines cannot write; start it with `mlflow server --serve-artifacts"),
    (CLUSTER, "http://127.0.0.1:5000", "file:///srv/mlruns/1", "a path other machines cannot write"),
    (["hydra/launcher=ray", "hydra.launcher.ray.init.address=127.0.0.1:1"], "http://127.0.0.1:5000", "mlflow-artifacts:/1",
     "refuses object_store_memory when it joins a running cluster; use hydra/launcher=ray_cluster"),
])
def test_a_cluster_that_cannot_work_is_refused_before_any_trial(overrides, uri, artifacts, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        launcher.check(_hydra(*overrides), uri, artifacts)


def test_launchers_that_are_not_ray_need_nothing():
    launcher.check(_hydra(), "sqlite:///mlflow.db", "/anywhere")  # the local default: nothing to check


def _loopback_env(tmp: Path) -> dict:
    """What every node and the driver share: token auth from one file, and loopback addresses."""
    token = tmp / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture
def cluster(tmp_path):
    """A Ray head and one worker node, each its own `ray start` process with 1 CPU, every address 127.0.0.1.
    Yields (address, env for the driver, the worker's process)."""
    env = _loopback_env(tmp_path)
    port = free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    head = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
            "--include-dashboard=false", f"--temp-dir={temp}", "--disable-usage-stats"]
    subprocess.run(head, env=env, check=True, capture_output=True, timeout=180)
    worker_env = {k: v for k, v in env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}  # `ray start --address` refuses it
    worker = subprocess.Popen([sys.executable, str(REPO / "tests" / "ray_loopback.py"), "start", "--block", f"--address={address}",
                               "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"],
                              env=worker_env, stdout=open(tmp_path / "worker.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            status = subprocess.run([RAY, "status", f"--address={address}"], env=env, capture_output=True, text=True)
            if len(re.findall(r"^\s*1 node_", status.stdout, re.M)) == 2:
                break
            time.sleep(2)
        else:
            pytest.fail(f"the worker node did not join: {status.stdout[-500:]} {(tmp_path / 'worker.log').read_text()[-1000:]}")
        yield address, env, worker
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        worker.kill()
        worker.wait(timeout=30)


def _ray_addresses() -> set[str]:
    """Every address in the command lines of this machine's Ray daemons (GCS server, raylets)."""
    found = set()
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if "gcs_server" in line or "/raylet" in line:
            found |= set(re.findall(r"(?:ip[_-]address|gcs[_-]address)=([\d.]+)", line))
    return found


def _node_id(worker: subprocess.Popen) -> str:
    for child in psutil.Process(worker.pid).children(recursive=True):
        if match := re.search(r"--node_id=([0-9a-f]+)", " ".join(child.cmdline())):
            return match.group(1)
    raise AssertionError("the worker node has no raylet")


def _trials(server: str, experiment: str):
    client = MlflowClient(server)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], f"tags.`{tracking.ROLE_TAG}` = 'trial'")


@pytest.mark.slow
def test_a_two_node_cluster_on_loopback_runs_the_sweep_and_survives_losing_a_node(tmp_path, tiny_root, server, cluster):
    address, env, worker = cluster
    assert _ray_addresses() == {"127.0.0.1"}, _ray_addresses()
    args = ["-m", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}", "tracking=server",
            f"tracking.uri={server}", f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", *TINY]

    # one CPU per node: two trials at once run one on each node
    done = cli(*args, "prune.ratio=0.1,0.2", "tracking.experiment=cluster", f"hydra.sweep.dir={tmp_path}/s1", env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = _trials(server, "cluster")
    assert sorted(r.data.params["prune.ratio"] for r in runs) == ["0.1", "0.2"]
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in runs)
    assert all("model.onnx" in {a.path for a in client.list_artifacts(r.info.run_id)} for r in runs)
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)  # through the server, from every node
    assert {r.data.tags["hw.node_ip"] for r in runs} == {"127.0.0.1"}
    assert len({r.data.tags["hw.node"] for r in runs}) == 2, [r.data.tags["hw.node"] for r in runs]  # both nodes ran trials
    print("\n".join(f"{r.data.params['prune.ratio']}  {r.info.status}  {r.data.tags['hw.node']}" for r in runs))

    # Lose the worker node while it runs a trial: the trial it held is recorded FAILED, Ray re-runs it on the head.
    lost = _node_id(worker)[:12]
    # Long enough that a trial seen RUNNING is still running 0.2 s later, when the node dies; 1500 made this
    # one test take 12 minutes of CI.
    slow = "benchmark.calls_per_block=300"
    sweep = subprocess.Popen([sys.executable, "-m", "lpr_sweep", *args, FOUR, slow, "tracking.experiment=lost", f"hydra.sweep.dir={tmp_path}/s2"],
                             cwd=REPO, env=env, stdout=open(tmp_path / "lost.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and sweep.poll() is None:
            _, runs = _trials(server, "lost")
            if any(r.info.status == "RUNNING" and r.data.tags.get("hw.node", "").endswith(lost) for r in runs):
                break
            time.sleep(0.2)
        for proc in [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]:
            proc.send_signal(signal.SIGKILL)  # the machine is gone: nothing of the node gets to clean up
        sweep.wait(timeout=900)
    finally:
        sweep.kill()
    log = (tmp_path / "lost.log").read_text()[-3000:]
    _, runs = _trials(server, "lost")
    print("\n".join(f"{r.data.params['prune.ratio']}  {r.info.status}  {r.data.tags['hw.node']}  {r.data.tags.get('error', '')}"
                    for r in runs))
    assert not [r for r in runs if r.info.status == "RUNNING"], log
    on_lost = [r for r in runs if r.data.tags["hw.node"].endswith(lost) and r.info.status != "FINISHED"]
    assert on_lost and all(r.info.status == "FAILED" and r.data.tags["error"].startswith("LostWorker") for r in on_lost), log
    assert len(tracking.latest_per_config(runs)) == 4

    done = cli(*args, FOUR, slow, "tracking.experiment=lost", f"hydra.sweep.dir={tmp_path}/s2", "resume=true", env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    _, runs = _trials(server, "lost")
    latest = tracking.latest_per_config(runs)
    assert len(latest) == 4 and all(r.info.status == "FINISHED" for r in latest)
