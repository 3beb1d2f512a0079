"""Where a trial runs: device and thread count, and a fingerprint of the machine for every run."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from lpr_sweep import ConfigError

DEVICES = ("cpu", "cuda")
# ISA extensions that decide which int8/fp32 kernels a runtime can use on x86.
_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "avx_vnni")


@dataclass
class HardwareConfig:
    device: str = "cpu"
    threads: int = 0  # intra-op threads per trial; 0 = every core this process may use
    # cuda: cuDNN's TF32 convolutions (torch's default) flip one of the 900 scored plates; fp32 stays fp32 unless asked
    allow_tf32: bool = False

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"hardware.device={self.device!r} is not one of {DEVICES}; use hardware=cpu or hardware=cuda")
        if self.threads < 0:
            raise ConfigError(f"hardware.threads={self.threads} is negative; use 0 for all cores or a positive count")


def parallel_jobs() -> int:
    """How many trials the launcher runs at once on this machine (1 for the basic launcher)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    target = str(launcher.get("_target_", ""))
    cores = len(os.sched_getaffinity(0))
    if target.endswith("JoblibLauncher"):
        n = launcher.get("n_jobs") or 1
        return cores if n < 0 else min(n, cores)  # joblib's -1 means one job per core
    if target.endswith("RayLauncher"):  # Ray runs as many tasks as their CPU reservation lets fit
        per_task = (launcher.get("ray", {}).get("remote", {}) or {}).get("num_cpus") or 1
        return max(1, cores // per_task)
    return 1


def threads(cfg: HardwareConfig) -> int:
    """Intra-op threads for this trial: the cores divided among parallel trials, unless set."""
    return cfg.threads or max(1, len(os.sched_getaffinity(0)) // parallel_jobs())


def check(cfg: HardwareConfig) -> None:
    """Fail before any work when the requested device is not there."""
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "hardware=cuda but torch sees no CUDA device (torch.cuda.is_available() is False); use hardware=cpu"
            )


def fingerprint() -> dict[str, str]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the model name from platform is what we have
        pass
    return {
        "hw.cpu": model,
        "hw.cores": str(len(os.sched_getaffinity(0))),
        "hw.isa": ",".join(f for f in _ISA_FLAGS if f in flags) or "none-detected",
        "hw.platform": platform.platform(),
        **node(),
    }


def node() -> dict[str, str]:
    """Which machine ran this: the host name, and inside a Ray task the Ray node and its address
    (on one machine, two Ray nodes share a host name)."""
    import socket
    import sys

    tags = {"hw.node": socket.gethostname()}
    ray = sys.modules.get("ray")  # only a Ray worker has it imported; importing it here costs seconds
    if ray is not None and ray.is_initialized():
        tags["hw.node"] += "/ray:" + ray.get_runtime_context().get_node_id()[:12]
        tags["hw.node_ip"] = ray.util.get_node_ip_address()
    return tags
