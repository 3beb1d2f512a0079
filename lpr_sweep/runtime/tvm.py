"""The Relax VM on a library that the compile stage lowers from the ONNX file.

The library is batch 1 (tuning needs static shapes), so a larger batch runs plate by plate, and a
batch-dependent norm cannot be compiled. This TVM wheel has no CUDA.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from lpr_sweep import ConfigError, size
from lpr_sweep import hardware as hw
from lpr_sweep.compile import params_file, target_of
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
        target_of(conf.compile, hw.threads(conf.hardware))  # a CPU name LLVM does not know, before any run

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

    @classmethod
    def profile(cls, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path, x: np.ndarray, warmup: int,
                calls: int) -> list[dict]:
        """Per-call times of every function the Relax VM calls (the compiled kernels and the VM's own
        builtins, such as allocations), from its instrument hook: a Python callback before and after
        each call. TVM's worker threads can fall asleep in the callback, so the sums run above the
        call's p50 (docs/measured.md, "TVM records that transfer"): they rank the large ops on a quiet host,
        they do not time them (on a busy one a 1 M-MAC conv once showed less time than a small mean)."""
        from lpr_sweep import profile

        rt = cls(model_file, hardware, workdir)
        for _ in range(warmup):
            rt(x[:1])
        totals: dict[tuple[str, str, str, str], float] = {}
        seen: dict[str, int] = {}
        started = [0]

        def instrument(func, symbol, before, ret, *args):
            if before:
                started[0] = time.perf_counter_ns()
                return 0
            symbol = str(symbol)
            seen[symbol] = seen.get(symbol, 0) + 1
            node = symbol if seen[symbol] == 1 else f"{symbol}#{seen[symbol]}"
            kind = "vm.builtin" if symbol.startswith("vm.builtin") else "tvm"
            key = (node, re.sub(r"(?<=\D)\d+(?=_|$)", "", symbol), kind, "fp32")  # fused_conv2d12_add6 -> fused_conv2d_add
            totals[key] = totals.get(key, 0.0) + (time.perf_counter_ns() - started[0]) / 1e3
            return 0  # VMInstrumentReturnKind.NO_OP

        rt.vm.set_instrument(instrument)
        for _ in range(calls):
            seen.clear()
            rt(x[:1])
        return profile.per_call(totals, calls)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self.vm["main"](self._tensor(batch[i : i + 1]), *self.params).numpy() for i in range(len(batch))])

    def constants(self) -> Iterator[np.ndarray]:
        # The library's constants are the ONNX initializers it was compiled from.
        return size.onnx_tensors(self.source)
