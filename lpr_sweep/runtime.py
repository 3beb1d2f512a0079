"""Runtimes run a prepared model on a batch of plates and name the deployable file they run.

A runtime is registered under the name the ``runtime`` config group uses; adding one is one class
here or in its own module, with no central if/elif to edit.
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


@dataclass
class Prepared:
    """What the optimization stages hand to a runtime."""

    module: nn.Module  # the PyTorch model (fp32, pruned, or int8 for quant=torch_x86)
    path: Path  # the graph file a runtime loads: ONNX (fp32 or int8 QDQ) or OpenVINO IR (.xml)
    artifact: Path | None = None  # a deployable file a stage already wrote for the torch runtime


class Runtime(Protocol):
    name: str
    artifacts: list[Path]  # the files a user deploys; size_file_bytes sums them

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


def build(name: str, prepared: Prepared, hardware: hw.HardwareConfig, workdir: Path) -> Runtime:
    if name not in _REGISTRY:
        raise ConfigError(f"runtime={name!r} is unknown; choose one of {names()}")
    return _REGISTRY[name](prepared, hardware, Path(workdir))


@register("torch")
class TorchRuntime:
    """PyTorch (eager, or the compiled int8 module of quant=torch_x86); deploys as a state dict."""

    name = "torch"

    def __init__(self, prepared: Prepared, hardware: hw.HardwareConfig, workdir: Path):
        import torch

        hw.check(hardware)
        torch.set_num_threads(hw.threads(hardware))
        self._torch = torch
        self.device = torch.device(hardware.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = hardware.allow_tf32
        self.model = prepared.module.to(self.device)
        if prepared.artifact is None:
            artifact = workdir / "model.pt"
            torch.save({k: v.cpu() for k, v in prepared.module.state_dict().items()}, artifact)
        self.artifacts = [prepared.artifact or artifact]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(batch).to(self.device)).cpu().numpy()


@register("onnxruntime")
class OnnxRuntime:
    """ONNX Runtime on the CPU provider, or CUDA with hardware=cuda."""

    name = "onnxruntime"

    def __init__(self, prepared: Prepared, hardware: hw.HardwareConfig, workdir: Path):
        import onnxruntime as ort

        if prepared.path.suffix != ".onnx":
            raise ConfigError(f"runtime=onnxruntime cannot load {prepared.path.name}; it needs an ONNX model")

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
        self.session = ort.InferenceSession(str(prepared.path), opts, providers=[provider])
        self.input_name = self.session.get_inputs()[0].name
        self.artifacts = [prepared.path]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


@register("openvino")
class OpenVinoRuntime:
    """OpenVINO's CPU plugin, on ONNX (fp32 or QDQ int8) or on an IR written by quant=nncf."""

    name = "openvino"

    def __init__(self, prepared: Prepared, hardware: hw.HardwareConfig, workdir: Path):
        import openvino as ov

        if hardware.device != "cpu":
            raise ConfigError(f"runtime=openvino with hardware={hardware.device}: it runs on OpenVINO's CPU plugin; use hardware=cpu")
        core = ov.Core()
        config = {
            # One request at a time with every thread on it: what a batch-1 latency measurement asks for.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": hw.threads(hardware),
            # On CPUs with BF16/AMX the plugin would otherwise run fp32 models in bf16, which changes
            # accuracy; int8 graphs keep their int8 kernels either way.
            "INFERENCE_PRECISION_HINT": "f32",
        }
        self.request = core.compile_model(core.read_model(prepared.path), "CPU", config).create_infer_request()
        bin_file = prepared.path.with_suffix(".bin")
        self.artifacts = [prepared.path] + ([bin_file] if prepared.path.suffix == ".xml" else [])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs avoids a copy per call; the caller does not touch the batch meanwhile.
        return self.request.infer({0: batch}, share_inputs=True)[0]


@register("tvm")
class TvmRuntime:
    """The Relax VM on a library from the compile stage. The library is batch 1 (tuning needs static
    shapes), so a larger batch runs plate by plate."""

    name = "tvm"

    def __init__(self, prepared: Prepared, hardware: hw.HardwareConfig, workdir: Path):
        import os

        if prepared.path.suffix != ".so":
            raise ConfigError(f"runtime=tvm runs a library built by the compile stage, not {prepared.path.name}")
        # TVM sizes its thread pool from this variable when the runtime first starts.
        os.environ["TVM_NUM_THREADS"] = str(hw.threads(hardware))
        import tvm
        from tvm import relax

        from lpr_sweep.compile import params_file

        self._tensor = tvm.runtime.tensor
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(prepared.path)), tvm.cpu())
        weights = params_file(prepared.path)
        self.params = []
        if weights.is_file():  # compile.cpu_weight_prepack: rewrite the weight layouts once, here
            with np.load(weights) as npz:
                originals = [self._tensor(npz[f"arr_{i}"]) for i in range(len(npz.files))]
            self.params = list(self.vm["main_transform_params"](originals))
        self.artifacts = [prepared.path] + ([weights] if weights.is_file() else [])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self.vm["main"](self._tensor(batch[i : i + 1]), *self.params).numpy() for i in range(len(batch))])
