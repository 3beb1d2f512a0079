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

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"hardware.device={self.device!r} is not one of {DEVICES}; use hardware=cpu or hardware=cuda")
        if self.threads < 0:
            raise ConfigError(f"hardware.threads={self.threads} is negative; use 0 for all cores or a positive count")


def threads(cfg: HardwareConfig) -> int:
    return cfg.threads or len(os.sched_getaffinity(0))


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
    }
