"""OpenVINO's CPU plugin, on ONNX (fp32 or QDQ int8) or on an IR written by quant=nncf."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from lpr_sweep import hardware as hw
from lpr_sweep import size
from lpr_sweep.model_file import ModelFile
from lpr_sweep.runtime import register


def ir_tensors(path: Path) -> Iterator[np.ndarray]:
    import openvino as ov

    for op in ov.Core().read_model(path).get_ops():
        if op.get_type_name() == "Constant":
            yield op.get_data()


@register("openvino")
class OpenVinoRuntime:
    packages = ("openvino",)
    devices = ("cpu",)

    def __init__(self, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path):
        import openvino as ov

        core = ov.Core()
        config = {
            # One request at a time with every thread on it: what a batch-1 latency measurement asks for.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": hw.threads(hardware),
            # On CPUs with BF16/AMX the plugin would otherwise run fp32 models in bf16, which changes
            # accuracy (docs/measured.md); int8 graphs keep their int8 kernels either way.
            "INFERENCE_PRECISION_HINT": "f32",
            # Pinned, its threads' speed against the unpinned ONNX Runtime reference varied twice as
            # much from process to process (1.74x-2.32x against 1.78x-2.08x, same median); alone, no
            # cost shown beyond noise (docs/measured.md, "What stays after that").
            "ENABLE_CPU_PINNING": False,
        }
        self.request = core.compile_model(core.read_model(model_file.path), "CPU", config).create_infer_request()
        self.path = model_file.path
        self.artifacts = [model_file.path] + ([model_file.path.with_suffix(".bin")] if model_file.format == "xml" else [])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs avoids a copy per call; the caller does not touch the batch meanwhile.
        return self.request.infer({0: batch}, share_inputs=True)[0]

    def constants(self) -> Iterator[np.ndarray]:
        return ir_tensors(self.path) if self.path.suffix == ".xml" else size.onnx_tensors(self.path)
