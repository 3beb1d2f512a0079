"""Shared fixtures: the real data root, tiny synthetic data roots, composed configs, a private MLflow store."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

import lpr_sweep.config  # noqa: F401  (registers the schema)
from lpr_sweep import export, prune, runtime
from lpr_sweep.compile import CompileConfig
from lpr_sweep.hardware import HardwareConfig
from lpr_sweep.model import LPRNet
from lpr_sweep.model_file import ModelFile
from lpr_sweep.prune import PruneConfig

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = Path(os.environ.get("LPR_DATA_ROOT", REPO.parent / "shared" / "data" / "lprnet")).resolve()
PLATES = ["京PL3N67", "川JK0707", "沪AMS087", "浙A6MX97", "粤B12345", "苏E8Z9Q1"]
# A trial in seconds: two calibration plates, two validation plates, a few timed calls.
TINY = ["data.calib_size=2", "data.val_size=2", "quant.calib_size=2", "benchmark.loads=2", "benchmark.blocks=2", "benchmark.max_blocks=2",
        "benchmark.calls_per_block=2", "benchmark.warmup=1", "benchmark.throughput_batch=2", "benchmark.throughput_repeats=1"]


def cli(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m lpr_sweep ARGS`` from the repo, as a user launches it."""
    return subprocess.run([sys.executable, "-m", "lpr_sweep", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def store_config(store: list[str]):
    """The TrackingConfig that the ``store`` overrides point at."""
    from lpr_sweep import tracking

    return tracking.TrackingConfig(uri=store[0].split("=", 1)[1], artifact_root=store[1].split("=", 1)[1])


def sweep_runs(store: list[str]):
    """(tracking config, every sweep parent run, every trial run) of the store, newest first."""
    from mlflow import MlflowClient

    from lpr_sweep import tracking

    cfg = store_config(store)
    exp = tracking.experiment_id(cfg)
    client = MlflowClient()
    parents = client.search_runs([exp], f"tags.`{tracking.ROLE_TAG}` = 'sweep'")
    return cfg, parents, client.search_runs([exp], f"tags.`{tracking.ROLE_TAG}` = 'trial'")


def write_manifest(root: Path) -> None:
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  ./{p.relative_to(root).as_posix()}\n"
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS"
    ]
    (root / "SHA256SUMS").write_text("".join(lines), encoding="utf-8")


def make_root(root: Path, labels=PLATES, size=(94, 24), weights=True, seed=0) -> Path:
    """A data root of random images named by ``labels`` and random LPRNet weights."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    for label in labels:
        ok, buf = cv2.imencode(".jpg", rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
        assert ok
        (root / "images" / f"{label}.jpg").write_bytes(buf.tobytes())
    if weights:
        (root / "weights").mkdir()
        torch.manual_seed(seed)
        torch.save(LPRNet().state_dict(), root / "weights" / "Final_LPRNet_model.pth")
    write_manifest(root)
    return root


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    return make_root(tmp_path / "data")


@pytest.fixture(scope="session")
def real_root() -> Path:
    if not (REAL_ROOT / "SHA256SUMS").is_file():
        pytest.fail(f"real data not found at {REAL_ROOT}; set LPR_DATA_ROOT")
    return REAL_ROOT


@pytest.fixture
def store(tmp_path) -> list[str]:
    """Overrides that send a trial's MLflow records to a private store under tmp_path."""
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns"]


def compose_cfg(overrides: list[str] = ()):
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def net_and_onnx(tmp_path_factory):
    """A randomly initialised LPRNet, its ONNX file, and a folder for runtimes to write into."""
    torch.manual_seed(0)
    net = LPRNet().eval()
    workdir = tmp_path_factory.mktemp("rt")
    return net, export.to_onnx(net, workdir / "m.onnx"), workdir


def build_runtime(name, net, onnx_path, workdir, **hw):
    return runtime.build(name, ModelFile(net, onnx_path), HardwareConfig(**hw), workdir)


@pytest.fixture(scope="module")
def pruned_onnx(tmp_path_factory):
    """A randomly initialised LPRNet pruned to 60 %, its ONNX file, and 20 random calibration inputs."""
    torch.manual_seed(0)
    net = prune.run(LPRNet().eval(), PruneConfig(ratio=0.6))
    workdir = tmp_path_factory.mktemp("quant")
    calib = np.random.default_rng(0).standard_normal((20, 3, 24, 94)).astype(np.float32)
    return ModelFile(net, export.to_onnx(net, workdir / "fp32.onnx")), calib, workdir


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """An MLflow tracking server on 127.0.0.1 that serves artifacts (into tmp_path/served)."""
    from lpr_sweep.tracking import _check_server

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "served")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                _check_server(uri, 2)
                break
            except Exception:
                time.sleep(1)
        yield uri
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# TVM on a one-conv model with LPRNet's input and output shapes (test_compile, test_tune).
TVM_HW = HardwareConfig(threads=2)


class TinyConv(nn.Module):
    """LPRNet's input and output shapes, one conv, one pool."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean(dim=2)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    net = TinyConv().eval()
    path = export.to_onnx(net, tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    return ModelFile(net, path)


def tvm_cfg(tmp_path, **kw):
    """A compile config with a two-trial budget, a private cache and no shipped records."""
    return CompileConfig(**{"total_trials": 2, "trials_per_task": 1, "trials_per_iter": 2, "tasks": [],
                            "cache_dir": str(tmp_path / "cache"), "records": "none", "layout": "NCHW", **kw})


def check_tvm_matches_ort(prepared, compiled):
    x = np.random.default_rng(0).standard_normal((3, 3, 24, 94)).astype(np.float32)
    want = ort.InferenceSession(str(prepared.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = runtime.build("tvm", compiled, TVM_HW, compiled.path.parent)(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
