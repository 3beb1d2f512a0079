"""ONNX Runtime on the CPU provider, or CUDA with hardware=cuda."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from lpr_sweep import ConfigError, size
from lpr_sweep import hardware as hw
from lpr_sweep.model_file import ModelFile
from lpr_sweep.runtime import register


@register("onnxruntime")
class OnnxRuntime:
    packages = ("onnxruntime",)
    devices = ("cpu", "cuda")

    def __init__(self, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path):
        import onnxruntime as ort

        if model_file.format != "onnx":
            raise ConfigError(f"runtime=onnxruntime cannot load {model_file.path.name}; it needs an ONNX model")
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
        # Idle pool threads otherwise spin on after each run, taking a core from whatever runs next:
        # in one process with other sessions (every paired benchmark) they slowed the next model by
        # a draw that differed per load, up to 35 %; a lone session loses nothing by it
        # (docs/measured.md, "ONNX Runtime's idle threads").
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(str(model_file.path), opts, providers=[provider])
        self.input_name = self.session.get_inputs()[0].name
        self.path = model_file.path
        self.artifacts = [model_file.path]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def constants(self) -> Iterator[np.ndarray]:
        return size.onnx_tensors(self.path)
