import os
import socket

import pytest
import torch

from lpr_sweep import ConfigError, hardware
from lpr_sweep.hardware import HardwareConfig


def test_zero_threads_means_every_usable_core():
    assert hardware.threads(HardwareConfig(threads=0)) == len(os.sched_getaffinity(0))
    assert hardware.threads(HardwareConfig(threads=1)) == 1


def test_fingerprint_names_cpu_cores_and_isa():
    fp = hardware.fingerprint()
    assert set(fp) == {"hw.cpu", "hw.cores", "hw.isa", "hw.platform", "hw.node"}  # hw.node_ip only inside a Ray task
    assert fp["hw.cpu"] and int(fp["hw.cores"]) >= 1 and fp["hw.node"] == socket.gethostname()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"hardware=cuda but torch sees no CUDA device .* use hardware=cpu"):
        hardware.check(HardwareConfig(device="cuda"))


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="hardware.device='tpu'"):
        HardwareConfig(device="tpu")
    with pytest.raises(ConfigError, match="hardware.threads=-1"):
        HardwareConfig(threads=-1)
