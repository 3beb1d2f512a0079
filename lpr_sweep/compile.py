"""TVM compilation with MetaSchedule auto-tuning (the original report's "MLC" step, on Relax).

ONNX -> Relax (batch 1, static shapes) -> legalize and fuse -> tune the chosen tasks with
MetaSchedule -> apply the tuning database -> build a shared library run by the Relax VM. The tuning
database (search, cache, shipped records) is ``lpr_sweep.tune``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpr_sweep import ConfigError, builder, tune
from lpr_sweep import hardware as hw
from lpr_sweep.model import INPUT_HW
from lpr_sweep.model_file import ModelFile

log = logging.getLogger(__name__)
LAYOUTS = {"NCHW": None, "NHWC": ["NHWC", "OHWI"]}  # data and weight layout of relax.nn.conv2d


@dataclass
class CompileConfig:
    target: str = "auto"  # auto: LLVM for this host's CPU; an LLVM CPU name (znver3); or a JSON target, e.g. {"kind":"llvm","mcpu":"znver4"}
    total_trials: int = 512  # 0 compiles with TVM's default schedules (no tuning)
    trials_per_task: int = 16
    task_trials: dict[str, int] = field(default_factory=dict)  # op name -> trials per task, e.g. {conv2d: 64}; others get trials_per_task
    trials_per_iter: int = 16  # candidates built and measured per batch
    tasks: list[str] = field(default_factory=list)  # op names to tune, e.g. [conv2d]; [] = every task
    builder_timeout_s: float = 300.0  # per build, a worker's first one included (it imports TVM's intrinsics)
    database: str = "auto"  # auto: a folder per key under the cache; or a path to reuse a database
    cache_dir: str = "auto"  # auto: $XDG_CACHE_HOME/lpr_sweep/tvm
    cpu_weight_prepack: bool = False  # rewrite weight layouts for the tuned kernels, once at load time
    layout: str = "NHWC"  # the convolutions' data layout: NHWC (converted before tuning) or NCHW (as exported)
    records: str = "auto"  # shipped records: auto = the package's compile_records/, none = never, or a folder

    def __post_init__(self):
        for key in ("total_trials", "trials_per_task", "trials_per_iter"):
            if getattr(self, key) < 0:
                raise ConfigError(f"compile.{key}={getattr(self, key)} is negative; use 0 (no tuning) or more")
        for op, n in self.task_trials.items():
            if n < 1:
                raise ConfigError(f"compile.task_trials.{op}={n}; give each listed op at least 1 trial, or drop it")
        if self.trials_per_iter == 0 or self.trials_per_task == 0:
            raise ConfigError("compile.trials_per_task and compile.trials_per_iter must be >= 1")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"compile.layout={self.layout}; use one of {', '.join(LAYOUTS)}")
        if self.builder_timeout_s <= 0:
            raise ConfigError(f"compile.builder_timeout_s={self.builder_timeout_s} must be positive")


def target_of(cfg: CompileConfig, threads: int):
    """The TVM target: the configured JSON dict, or LLVM for this CPU, with num-cores from hardware."""
    import tvm
    from tvm.target import codegen

    if cfg.target == "auto":
        spec = {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}
    elif not cfg.target.lstrip().startswith("{"):  # a bare CPU name, e.g. to build AVX2 records on an AVX-512 host
        if not codegen.llvm_is_valid_cpu(cfg.target, codegen.llvm_get_system_triple()):
            raise ConfigError(f"compile.target={cfg.target!r} is not a CPU LLVM knows; use auto, a name such as znver3 "
                              "or skylake-avx512, or a JSON target")
        spec = {"kind": "llvm", "mcpu": cfg.target}
    else:
        try:
            spec = json.loads(cfg.target)
            if not isinstance(spec, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            raise ConfigError(
                f"compile.target={cfg.target!r} is not a JSON target ({e}); "
                """write it like '{"kind": "llvm", "mcpu": "znver4"}' or use auto"""
            ) from None
    spec["num-cores"] = threads
    try:
        return tvm.target.Target(spec)
    except Exception as e:  # TVM raises its own error types for unknown kinds and options
        raise ConfigError(f"compile.target={cfg.target!r}: TVM cannot parse it ({str(e).splitlines()[-1]})") from None


def _relax_module(onnx_path: Path):
    """Batch-1 Relax module with the weights as function parameters, and their values by name."""
    import onnx
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict={"input": [1, 3, *INPUT_HW]}, keep_params_in_input=True)
    mod, params = relax.frontend.detach_params(mod)
    names = [p.name for p in mod["main"].params[1:]]
    return mod, dict(zip(names, params["main"]))


def _fused(mod, target, prepack: bool, layout: str):
    import tvm
    from tvm import relax
    from tvm.relax import transform

    convert = [transform.ConvertLayout({"relax.nn.conv2d": LAYOUTS[layout]})] if LAYOUTS[layout] else []
    with target:
        return tvm.transform.Sequential([
            transform.DecomposeOpsForInference(),
            *convert,
            transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
            *([transform.AttachAttrLayoutFreeBuffers()] if prepack else []),
        ])(mod)


def graph(onnx_path: Path, target, prepack: bool, layout: str):
    """The fused Relax graph that is tuned and built, the weights by name, and whether it holds QDQ ops."""
    from tvm import relax

    mod, params = _relax_module(onnx_path)
    if not prepack:
        mod = relax.transform.BindParams("main", params)(mod)  # weights become constants in the library
    # TVM's ONNX importer turns QDQ pairs into quantize/dequantize around fp32 ops: an int8 QDQ graph
    # runs, but without int8 kernels. The metric says so in the run.
    qdq = "R.dequantize" in mod.script(show_meta=False)
    with builder.fast_tvmscript_import():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (tuning and applying a database import it)
    return _fused(mod, target, prepack, layout), params, qdq


def run(model_file: ModelFile, cfg: CompileConfig, hardware: hw.HardwareConfig, workdir: Path) -> tuple[ModelFile, dict[str, float]]:
    """Compile ``model_file.path`` (ONNX) into ``workdir/model_tvm.so``; return it and the tuning metrics."""
    import tvm
    from tvm.relax import transform

    if model_file.format != "onnx":
        raise ConfigError(f"the compile stage lowers ONNX; it cannot take {model_file.path.name}")
    threads = hw.threads(hardware)
    target = target_of(cfg, threads)
    fused, params, qdq = graph(model_file.path, target, cfg.cpu_weight_prepack, cfg.layout)
    db_path, stats = tune.database(fused, target, cfg, threads)
    if qdq:
        log.warning("runtime=tvm on an int8 QDQ graph: TVM runs it as fp32 with quantize/dequantize, no int8 kernels")
        stats["tvm_qdq_as_fp32"] = 1
    with target:  # the passes read the target when they are constructed
        apply = [transform.MetaScheduleApplyDatabase(str(db_path))] if db_path else []
        post = [transform.SplitLayoutRewritePreproc(), transform.LiftTransformParams(), transform.FoldConstant()]
        final = tvm.transform.Sequential([*apply, *(post if cfg.cpu_weight_prepack else [])])(fused)
    Path(workdir).mkdir(parents=True, exist_ok=True)
    library = Path(workdir) / "model_tvm.so"
    tvm.compile(final, target=target).export_library(str(library))
    if cfg.cpu_weight_prepack:
        # The library takes the weights as inputs and rewrites their layout once at load time
        # (main_transform_params); ship the originals beside it, in parameter order.
        np.savez(params_file(library), *[p.numpy() for p in params.values()])
    return ModelFile(model_file.module, library, source=model_file.path), stats


def params_file(library: Path) -> Path:
    return library.with_name(library.stem + "_params.npz")
