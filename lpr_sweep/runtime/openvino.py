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
MAX_SHAPES = 4  # compiled batch sizes a runtime keeps besides batch 1


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
        self.model_file, self.hardware, self.precision = model_file, hardware, precision
        # A request per batch size, each compiled for that static shape: the exported batch is dynamic,
        # and OpenVINO's dynamic-shape path cost 5-8 % a call at batch 1 here (docs/measured.md, "OpenVINO
        # on a static batch"). Batch 1, what latency is timed at, is compiled now.
        self.requests = {1: _compile(model_file, hardware, precision, batch=1).create_infer_request()}
        self.path = model_file.path
        self.artifacts = [model_file.path] + ([model_file.path.with_suffix(".bin")] if model_file.format == "xml" else [])

    @classmethod
    def check(cls, conf) -> None:
        import openvino as ov

        if conf.runtime.precision == "bf16" and "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise ConfigError("runtime.precision=bf16: this CPU has no bf16 instructions (AVX512_BF16 or AMX), so OpenVINO "
                              "would run fp32 anyway; use runtime.precision=fp32")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import openvino as ov

        n = len(batch)
        if n not in self.requests:
            if len(self.requests) > MAX_SHAPES:  # a server sees many batch sizes: keep batch 1 and the latest few
                del self.requests[next(k for k in self.requests if k != 1)]
            self.requests[n] = _compile(self.model_file, self.hardware, self.precision, batch=n).create_infer_request()
        request = self.requests[n]
        # The input shares the caller's memory (it is not touched meanwhile); the output buffer is the
        # request's own and is overwritten by the next call, hence the copy. This lean call path (no
        # dict in, no OVDict out) was ~2 % faster a call than `infer({0: batch})[0]` at batch 1.
        x = np.ascontiguousarray(batch, dtype=np.float32)  # named: the tensor borrows its memory until infer returns
        request.set_input_tensor(ov.Tensor(x, shared_memory=True))
        request.infer()
        return request.get_output_tensor().data.copy()

    def constants(self) -> Iterator[np.ndarray]:
        return ir_tensors(self.path) if self.path.suffix == ".xml" else size.onnx_tensors(self.path)

    @classmethod
    def profile(cls, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path, x: np.ndarray, warmup: int,
                calls: int, precision: str = "fp32") -> list[dict]:
        """OpenVINO's per-node counters (``PERF_COUNT``), summed over the ``calls`` calls after ``warmup``."""
        import openvino as ov

        from lpr_sweep import profile

        executed = ov.ProfilingInfo.Status.EXECUTED
        request = _compile(model_file, hardware, precision, len(x), {"PERF_COUNT": True}).create_infer_request()
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


def _compile(model_file: ModelFile, hardware: hw.HardwareConfig, precision: str, batch: int, extra: dict | None = None):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(model_file.path)
    shape = model.input(0).get_partial_shape()
    shape[0] = batch
    model.reshape({0: shape})
    return core.compile_model(model, "CPU", {**_config(hardware, precision), **(extra or {})})
