"""The Relax VM on a library that the compile stage lowers from the ONNX file.

The library is batch 1 (tuning needs static shapes), so a larger batch runs plate by plate, and a
batch-dependent norm cannot be compiled. This TVM wheel has no CUDA.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lpr_sweep import ConfigError, size
from lpr_sweep import hardware as hw
from lpr_sweep.compile import params_file
from lpr_sweep.model_file import ModelFile
from lpr_sweep.runtime import register


@register("tvm")
class TvmRuntime:
    packages = ("apache-tvm", "apache-tvm-ffi")
    devices = ("cpu",)
    lowering = "compile"

    @staticmethod
    def check(conf: Any) -> None:
        if conf.model.norm == "batch":
            raise ConfigError("runtime=tvm compiles a batch-1 library, so model.norm=batch cannot see the batch; use model.norm=sample")

    def __init__(self, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path):
        if model_file.format != "so":
            raise ConfigError(f"runtime=tvm runs a library built by the compile stage, not {model_file.path.name}")
        # TVM sizes its thread pool from this variable when the runtime first starts.
        os.environ["TVM_NUM_THREADS"] = str(hw.threads(hardware))
        import tvm
        from tvm import relax

        self._tensor = tvm.runtime.tensor
        self.vm = relax.VirtualMachine(tvm.runtime.load_module(str(model_file.path)), tvm.cpu())
        weights = params_file(model_file.path)
        self.params = []
        if weights.is_file():  # compile.cpu_weight_prepack: rewrite the weight layouts once, here
            with np.load(weights) as npz:
                originals = [self._tensor(npz[f"arr_{i}"]) for i in range(len(npz.files))]
            self.params = list(self.vm["main_transform_params"](originals))
        self.source = model_file.source
        self.artifacts = [model_file.path] + ([weights] if weights.is_file() else [])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self.vm["main"](self._tensor(batch[i : i + 1]), *self.params).numpy() for i in range(len(batch))])

    def constants(self) -> Iterator[np.ndarray]:
        # The library's constants are the ONNX initializers it was compiled from.
        return size.onnx_tensors(self.source)
