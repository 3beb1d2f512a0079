"""Runtimes run a prepared model on a batch of plates and name the deployable file they run.

A runtime is registered under the name the ``runtime`` config group uses; adding one (TVM, OpenVINO)
is one class here or in its own module, with no central if/elif to edit.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
from torch import nn

from lpr_sweep import ConfigError
from lpr_sweep import hardware as hw


@dataclass
class RuntimeConfig:
    name: str = "onnxruntime"


class Runtime(Protocol):
    name: str
    artifact: Path  # the file a user deploys; size_file_bytes measures it

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, 24, 94) float32 -> (N, classes, 18) logits."""


_REGISTRY: dict[str, Callable[..., Runtime]] = {}


def register(name: str):
    def add(factory):
        if name in _REGISTRY:
            raise ValueError(f"runtime {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, *, model: nn.Module, onnx_path: Path, hardware: hw.HardwareConfig, workdir: Path) -> Runtime:
    if name not in _REGISTRY:
        raise ConfigError(f"runtime={name!r} is unknown; choose one of {names()}")
    return _REGISTRY[name](model=model, onnx_path=onnx_path, hardware=hardware, workdir=workdir)


@register("torch")
class TorchRuntime:
    """Eager PyTorch; deploys as a state dict."""

    name = "torch"

    def __init__(self, *, model: nn.Module, onnx_path: Path, hardware: hw.HardwareConfig, workdir: Path):
        import torch

        hw.check(hardware)
        torch.set_num_threads(hw.threads(hardware))
        self._torch = torch
        self.device = torch.device(hardware.device)
        self.model = model.to(self.device).eval()
        self.artifact = Path(workdir) / "model.pt"
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, self.artifact)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch).to(self.device)).cpu().numpy()


@register("onnxruntime")
class OnnxRuntime:
    """ONNX Runtime on the CPU provider, or CUDA with hardware=cuda."""

    name = "onnxruntime"

    def __init__(self, *, model: nn.Module, onnx_path: Path, hardware: hw.HardwareConfig, workdir: Path):
        import onnxruntime as ort

        provider = "CUDAExecutionProvider" if hardware.device == "cuda" else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise ConfigError(
                f"hardware={hardware.device} needs onnxruntime's {provider}, which this install lacks "
                f"(has {ort.get_available_providers()}); install onnxruntime-gpu or use hardware=cpu"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = hw.threads(hardware)
        opts.inter_op_num_threads = 1  # the graph is a chain: parallel branches would only contend
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=[provider])
        self.input_name = self.session.get_inputs()[0].name
        self.artifact = Path(onnx_path)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]
