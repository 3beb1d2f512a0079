"""ONNX Runtime on the CPU provider, or CUDA with hardware=cuda."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lpr_sweep import ConfigError, size
from lpr_sweep import hardware as hw
from lpr_sweep.model_file import ModelFile
from lpr_sweep.runtime import register


def _provider(hardware: hw.HardwareConfig) -> str:
    return "CUDAExecutionProvider" if hardware.device == "cuda" else "CPUExecutionProvider"


def _options(hardware: hw.HardwareConfig) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = hw.threads(hardware)
    opts.inter_op_num_threads = 1  # the graph is a chain: parallel branches would only contend
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads otherwise spin on after each run, taking a core from whatever runs next:
    # in one process with other sessions (every paired benchmark) they slowed the next model by
    # a draw that differed per load, up to 35 %; a lone session loses nothing by it
    # (docs/measured.md, "ONNX Runtime's idle threads").
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    return opts


_PRECISION = {"float": "fp32", "float16": "fp16", "uint8": "u8", "int8": "i8", "int32": "i32", "int64": "i64"}


@register("onnxruntime")
class OnnxRuntime:
    packages = ("onnxruntime",)
    devices = ("cpu", "cuda")

    def __init__(self, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path):
        import onnxruntime as ort

        if model_file.format != "onnx":
            raise ConfigError(f"runtime=onnxruntime cannot load {model_file.path.name}; it needs an ONNX model")
        provider = _provider(hardware)
        if provider not in ort.get_available_providers():
            raise ConfigError(
                f"hardware={hardware.device} needs onnxruntime's {provider}, which this install lacks "
                f"(has {ort.get_available_providers()}); install onnxruntime-gpu or use hardware=cpu"
            )
        opts = _options(hardware)
        self.session = ort.InferenceSession(str(model_file.path), opts, providers=[provider])
        self.input_name = self.session.get_inputs()[0].name
        self.path = model_file.path
        self.artifacts = [model_file.path]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def constants(self) -> Iterator[np.ndarray]:
        return size.onnx_tensors(self.path)

    @classmethod
    def profile(cls, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path, x: np.ndarray, warmup: int,
                calls: int) -> list[dict]:
        """Per-node kernel times from ONNX Runtime's session profiler, over the ``calls`` runs after ``warmup``."""
        import onnxruntime as ort

        from lpr_sweep import profile

        opts = _options(hardware)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(workdir / "ort_profile")
        session = ort.InferenceSession(str(model_file.path), opts, providers=[_provider(hardware)])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(warmup + calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
        start = runs[warmup] if warmup < len(runs) else 0  # the profiler counts from the session's start
        totals: dict[tuple[str, str, str, str], float] = {}
        for e in events:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
                continue
            args = e.get("args", {})
            inputs = args.get("input_type_shape") or [{}]
            dtype = next(iter(inputs[0]), "?")
            key = (e["name"][: -len("_kernel_time")], args.get("op_name", "?"), args.get("provider", "?"), _PRECISION.get(dtype, dtype))
            totals[key] = totals.get(key, 0.0) + e["dur"]
        return profile.per_call(totals, calls)
