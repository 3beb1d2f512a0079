"""OpenVINO's CPU plugin, on ONNX (fp32 or QDQ int8) or on an IR written by quant=nncf."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from lpr_sweep import ConfigError
from lpr_sweep import hardware as hw
from lpr_sweep import size
from lpr_sweep.model_file import ModelFile
from lpr_sweep.runtime import register


def ir_tensors(path: Path) -> Iterator[np.ndarray]:
    import openvino as ov

    for op in ov.Core().read_model(path).get_ops():
        if op.get_type_name() == "Constant":
            yield op.get_data()


PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # runtime.precision -> OpenVINO's INFERENCE_PRECISION_HINT


def _config(hardware: hw.HardwareConfig, precision: str) -> dict:
    return {
        # One request at a time with every thread on it: what a batch-1 latency measurement asks for.
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": hw.threads(hardware),
        # Explicit: on CPUs with AMX the plugin would otherwise run fp32 models in bf16, which changes
        # accuracy (docs/measured.md); int8 graphs keep their int8 kernels either way.
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
        # Pinned, its threads' speed against the unpinned ONNX Runtime reference varied twice as
        # much from process to process (1.74x-2.32x against 1.78x-2.08x, same median); alone, no
        # cost shown beyond noise (docs/measured.md, "What stays after that").
        "ENABLE_CPU_PINNING": False,
    }


@register("openvino")
class OpenVinoRuntime:
    packages = ("openvino",)
    devices = ("cpu",)
    precisions = tuple(PRECISIONS)
    kernel_names = True  # its profile names each kernel (ref_* = reference kernels)

    def __init__(self, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path, precision: str = "fp32"):
        self.request = _compile(model_file, hardware, precision).create_infer_request()
        self.path = model_file.path
        self.artifacts = [model_file.path] + ([model_file.path.with_suffix(".bin")] if model_file.format == "xml" else [])

    @classmethod
    def check(cls, conf) -> None:
        import openvino as ov

        if conf.runtime.precision == "bf16" and "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise ConfigError("runtime.precision=bf16: this CPU has no bf16 instructions (AVX512_BF16 or AMX), so OpenVINO "
                              "would run fp32 anyway; use runtime.precision=fp32")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs avoids a copy per call; the caller does not touch the batch meanwhile.
        return self.request.infer({0: batch}, share_inputs=True)[0]

    def constants(self) -> Iterator[np.ndarray]:
        return ir_tensors(self.path) if self.path.suffix == ".xml" else size.onnx_tensors(self.path)

    @classmethod
    def profile(cls, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path, x: np.ndarray, warmup: int,
                calls: int, precision: str = "fp32") -> list[dict]:
        """OpenVINO's per-node counters (``PERF_COUNT``), summed over the ``calls`` calls after ``warmup``."""
        import openvino as ov

        from lpr_sweep import profile

        executed = ov.ProfilingInfo.Status.EXECUTED
        request = _compile(model_file, hardware, precision, {"PERF_COUNT": True}).create_infer_request()
        for _ in range(warmup):
            request.infer({0: x})
        totals: dict[tuple[str, str, str, str], float] = {}
        for _ in range(calls):
            request.infer({0: x})
            for p in request.profiling_info:
                if p.status == executed:
                    # the kernel's name ends in its precision: brgconv_avx512_I8, ref_f32, jit_avx512_bf16
                    key = (p.node_name, p.node_type, p.exec_type, p.exec_type.rsplit("_", 1)[-1].lower())
                    totals[key] = totals.get(key, 0.0) + p.real_time.total_seconds() * 1e6
        return profile.per_call(totals, calls)


def _compile(model_file: ModelFile, hardware: hw.HardwareConfig, precision: str, extra: dict | None = None):
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(model_file.path), "CPU", {**_config(hardware, precision), **(extra or {})})
