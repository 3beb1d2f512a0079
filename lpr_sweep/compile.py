"""TVM compilation with MetaSchedule auto-tuning (the original report's "MLC" step, on Relax).

ONNX -> Relax (batch 1, static shapes) -> legalize and fuse -> tune the chosen tasks with
MetaSchedule -> apply the tuning database -> build a shared library run by the Relax VM.

The tuning database is keyed by the graph (its structure, not its weight values), the target, the
TVM version and the budget, and lives in a user cache: every pruning ratio shares one database, so
only the first trial of a sweep pays for tuning. A file lock serialises trials that would tune the
same key; a database is tuned in a temporary folder and renamed into place only when complete.
Records shipped with the package (``compile_records/``: the best schedule of every task of this
project's graphs, for the reference CPU) seed that cache when their key matches, so a fresh clone
on that CPU builds tuned kernels without tuning (``lpr_sweep.records``).

Two traps of this TVM (docs/measured.md, "TVM") are handled here: builder workers spend ~40 s
importing TVM's tensor intrinsics (this module makes it ~6 s and keeps one worker pool for the whole
run), and a tuning run in which no candidate built raises with the builder's message instead of
silently measuring nothing.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lpr_sweep import ConfigError, cache, records
from lpr_sweep import hardware as hw
from lpr_sweep.model import INPUT_HW
from lpr_sweep.model_file import ModelFile
from lpr_sweep.records import TARGET_FILE

log = logging.getLogger(__name__)
RECYCLE_AFTER = 64  # builds per builder worker before it is restarted
LAYOUTS = {"NCHW": None, "NHWC": ["NHWC", "OHWI"]}  # data and weight layout of relax.nn.conv2d


@dataclass
class CompileConfig:
    target: str = "auto"  # auto: LLVM for this host's CPU; else a JSON target, e.g. {"kind":"llvm","mcpu":"znver4"}
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


def key_of(fused, target, cfg: CompileConfig) -> str:
    import tvm

    budget = [cfg.total_trials, cfg.trials_per_task, sorted(cfg.tasks), cfg.cpu_weight_prepack]
    if cfg.task_trials:  # appended only when set, so databases tuned before it existed keep their keys
        budget.append(sorted(cfg.task_trials.items()))
    text = "\n".join([fused.script(show_meta=False), str(target), tvm.__version__, json.dumps(budget)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_root(cfg: CompileConfig) -> Path:
    if cfg.cache_dir != "auto":
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lpr_sweep" / "tvm"


@contextlib.contextmanager
def fast_tvmscript_import():
    """Let ``import tvm.s_tir.tensor_intrin`` take ~6 s instead of ~40 s (measured here).

    Its ~250 TVMScript functions each call ``inspect.stack()``, which asks ``inspect.getmodule`` for
    every frame; for the import machinery's frames ("<frozen importlib._bootstrap>") no module ever
    matches, so each call scans all of ``sys.modules``. Answering None for such pseudo-files at once
    is what the scan would conclude anyway. Both the tuning process and every builder worker import it.
    """
    import inspect

    original = inspect.getmodule

    def getmodule(obj, _filename=None):
        if _filename is not None and _filename.startswith("<"):
            return None
        return original(obj, _filename)

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = original


def _builder_worker_init():
    with fast_tvmscript_import():
        import tvm.s_tir.tensor_intrin  # noqa: F401  (each build needs it; import it once per worker)


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _progress_builder(cfg: CompileConfig, threads: int, budget: int):
    """A MetaSchedule builder with a persistent worker pool that logs progress and keeps build errors.

    TVM's LocalBuilder starts a fresh pool for every batch, and each worker's first build imports
    TVM's tensor intrinsics (~40 s here): most of a default tuning run was that start-up. This pool
    lives for the whole run and its workers import them the fast way; a worker is recycled after
    ``RECYCLE_AFTER`` builds, which bounds the memory leak TVM restarts its pool for.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import (
        _serialize_params,
        _worker_func,
    )
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    batches = -(-budget // cfg.trials_per_iter)

    @derived_object
    class ProgressBuilder(PyBuilder):
        def __init__(self):
            super().__init__()
            self.pool = PopenPoolExecutor(max_workers=threads, timeout=cfg.builder_timeout_s,
                                          maximum_process_uses=RECYCLE_AFTER, initializer=_builder_worker_init)
            self.t0, self.batches, self.done, self.built, self.errors, self.dead_batches = time.perf_counter(), 0, 0, 0, [], 0

        def build(self, build_inputs):
            if not build_inputs:  # a task whose design space is spent: MetaSchedule asks again until it gives up
                return []
            jobs = [(None, None, b.mod, b.target, _serialize_params(b.params)) for b in build_inputs]
            results = []
            for r in self.pool.map_with_error_catching(lambda job: _worker_func(*job), jobs):
                if r.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(r.value, None))
                elif r.status == StatusKind.TIMEOUT:
                    results.append(BuilderResult(None, f"LocalBuilder: Timeout, killed after {cfg.builder_timeout_s} seconds"))
                else:
                    results.append(BuilderResult(None, f"LocalBuilder: An exception occurred\n{r.value}"))
            ok = sum(r.error_msg is None for r in results)
            self.batches, self.done, self.built = self.batches + 1, self.done + len(results), self.built + ok
            if results and not ok:
                self.dead_batches += 1
                self.errors.append(str(results[0].error_msg).strip().splitlines()[-1])
                log.error("tune: all %d candidates of batch %d failed to build: %s", len(results), self.batches, self.errors[-1])
            elapsed = time.perf_counter() - self.t0
            log.info("tune: batch %d/~%d, %d/%d trials (%d built), %.0f s elapsed, ~%.0f s left", self.batches, batches,
                     self.done, budget, self.built, elapsed, elapsed / self.done * max(budget - self.done, 0))
            return results

        def close(self):
            self.pool.shutdown()

    return ProgressBuilder()


def tune(fused, target, cfg: CompileConfig, work_dir: Path, threads: int) -> dict[str, float]:
    """Tune ``fused`` into ``work_dir``; raise when nothing could be measured."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(fused, target)
    chosen = [t for t in tasks if not cfg.tasks or any(op in t.task_name for op in cfg.tasks)]
    groups: dict[int, list] = {}  # trials per task -> its tasks; MetaSchedule takes one cap per run
    for task in chosen:
        groups.setdefault(next((n for op, n in cfg.task_trials.items() if op in task.task_name), cfg.trials_per_task), []).append(task)
    budget = min(cfg.total_trials, sum(n * len(group) for n, group in groups.items()))
    log.info("tune: %d of %d tasks (%s), budget %d trials (%s)", len(chosen), len(tasks), ", ".join(cfg.tasks) or "all",
             budget, ", ".join(f"{len(group)} tasks x {n}" for n, group in sorted(groups.items(), reverse=True)))
    progress = _progress_builder(cfg, threads, budget)
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    runner = ms.runner.LocalRunner()
    t0 = time.perf_counter()
    try:
        for n, group in sorted(groups.items(), reverse=True):  # the largest budgets (the convs) first
            if (left := budget - progress.done) <= 0:
                break
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(group, str(work_dir))
            ms.tune.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(work_dir), max_trials_global=min(left, n * len(group)),
                               max_trials_per_task=n, num_trials_per_iter=cfg.trials_per_iter, builder=progress, runner=runner,
                               database=database)
    finally:
        progress.close()
    valid = [r for r in database.get_all_tuning_records() if r.run_secs and np.isfinite(float(r.run_secs[0])) and float(r.run_secs[0]) < 1e9]
    if progress.done and not valid:
        raise RuntimeError(
            f"TVM tuning measured nothing: {progress.done} candidates, {progress.built} built, none ran; "
            f"builder said: {progress.errors[0] if progress.errors else 'no error reported'}; "
            "raise compile.builder_timeout_s or check the target"
        )
    return {"tune_trials_run": progress.done, "tune_seconds": time.perf_counter() - t0,
            "tune_tasks": len(chosen), "tune_tasks_total": len(tasks), "tune_failed_batches": progress.dead_batches}


def database_for(fused, target, cfg: CompileConfig, threads: int) -> tuple[Path | None, dict[str, float]]:
    """The tuning database for this graph and target: cached, else seeded from shipped records, else tuned now."""
    if cfg.database == "auto" and cfg.total_trials == 0:
        return None, {"tune_db_hit": 0, "tune_trials_run": 0, "tune_seconds": 0.0}
    if cfg.database != "auto":
        path = Path(cfg.database).expanduser()
        _check_target(path, target)
        if (problem := cache.damage(path)) is not None and (path / cache.SEAL).is_file():
            raise ConfigError(f"compile.database={path} is damaged ({problem}); restore it or use compile.database=auto")
        return path, {"tune_db_hit": 1, "tune_trials_run": 0, "tune_seconds": 0.0}
    root = cache_root(cfg)
    path = root / key_of(fused, target, cfg)
    with _locked(root / f"{path.name}.lock"):
        if (path / cache.SEAL).is_file() and (problem := cache.damage(path)) is not None:
            log.error("tune: database %s is damaged (%s); removed and tuned again", path, problem)
            shutil.rmtree(path, ignore_errors=True)
        if (path / TARGET_FILE).is_file():
            _check_target(path, target)
            log.info("tune: reusing database %s", path)
            return path, {"tune_db_hit": 1, "tune_trials_run": 0, "tune_seconds": 0.0}
        work = Path(tempfile.mkdtemp(prefix=f"{path.name}.", dir=root))
        try:
            stats = records.seed(records_dir(cfg), fused, target, path.name, work) or tune(fused, target, cfg, work, threads)
            (work / TARGET_FILE).write_text(json.dumps(_target_record(target), sort_keys=True))
            cache.seal(work)
            work.rename(path)  # atomic: a reader never sees a half-written database
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path, {"tune_db_hit": 0, **stats}


def records_dir(cfg: CompileConfig) -> Path | None:
    if cfg.records == "none":
        return None
    return records.SHIPPED if cfg.records == "auto" else Path(cfg.records).expanduser()


def _target_record(target) -> dict:
    """The target as plain JSON values (TVM returns its own map and string types)."""
    return json.loads(json.dumps({str(k): v for k, v in target.export().items()}, default=str))


def _check_target(path: Path, target) -> None:
    recorded = path / TARGET_FILE
    if not recorded.is_file():
        raise ConfigError(f"compile.database={path} is not a lpr_sweep tuning database (no {TARGET_FILE}); use auto")
    want, have = _target_record(target), json.loads(recorded.read_text())
    if have != want:
        raise ConfigError(
            f"tuning database {path} was tuned for target {have.get('mcpu', have.get('kind'))} "
            f"(num-cores {have.get('num-cores')}), not {want.get('mcpu', want.get('kind'))} "
            f"(num-cores {want.get('num-cores')}); it is never applied to another target: use compile.database=auto"
        )


def graph(onnx_path: Path, target, prepack: bool, layout: str):
    """The fused Relax graph that is tuned and built, the weights by name, and whether it holds QDQ ops."""
    from tvm import relax

    mod, params = _relax_module(onnx_path)
    if not prepack:
        mod = relax.transform.BindParams("main", params)(mod)  # weights become constants in the library
    # TVM's ONNX importer turns QDQ pairs into quantize/dequantize around fp32 ops: an int8 QDQ graph
    # runs, but without int8 kernels. The metric says so in the run.
    qdq = "R.dequantize" in mod.script(show_meta=False)
    with fast_tvmscript_import():
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
    db_path, stats = database_for(fused, target, cfg, threads)
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
