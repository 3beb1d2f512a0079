"""The compile stage's tuning database: MetaSchedule search, its cache, and the shipped records.

The database is keyed by the graph (its structure, not its weight values), the target, the TVM
version and the budget, and lives in a user cache: every pruning ratio shares one database, so only
the first trial of a sweep pays for tuning. A file lock serialises trials that would tune the same
key; a database is tuned in a temporary folder and renamed into place only when complete. Records
shipped with the package (``compile_records/``, ``lpr_sweep.records``: the best schedule of every
task of this project's graphs, per ISA family) seed that cache: as they are when they were tuned
for this target on this CPU (``exact``), else re-measured here first (``transferred``); only the
tasks they do not cover are tuned. A database is never applied to a target other than the one it
was built for.

Two traps of this TVM (docs/measured.md, "TVM") are handled here: a tuning run in which no
candidate built raises with the builder's message instead of silently measuring nothing, and
MetaSchedule's log files outlive the run (``_close_log_files``). The builder's own (a ~40 s import
per worker) is ``lpr_sweep.builder``'s.
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
from pathlib import Path
from typing import Any

import numpy as np

from lpr_sweep import ConfigError, builder, cache, records
from lpr_sweep.records import TARGET_FILE

log = logging.getLogger(__name__)
# The functions take compile.CompileConfig as `cfg`; annotated Any, since compile imports this module.
CompileConfig = Any


def _key(fused, cfg: CompileConfig, *more: str) -> str:
    import tvm

    budget = [cfg.total_trials, cfg.trials_per_task, sorted(cfg.tasks), cfg.cpu_weight_prepack]
    if cfg.task_trials:  # appended only when set, so databases tuned before it existed keep their keys
        budget.append(sorted(cfg.task_trials.items()))
    text = "\n".join([fused.script(show_meta=False), *more, tvm.__version__, json.dumps(budget)])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def key_of(fused, target, cfg: CompileConfig) -> str:
    """The cache's key: a database serves one graph, budget and target."""
    return _key(fused, cfg, str(target))


def graph_key(fused, cfg: CompileConfig) -> str:
    """The shipped records' key: the graph and budget alone; the ISA family is in the file's name."""
    return _key(fused, cfg)


def cache_root(cfg: CompileConfig) -> Path:
    if cfg.cache_dir != "auto":
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lpr_sweep" / "tvm"


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def search(fused, target, cfg: CompileConfig, work_dir: Path, threads: int, only: list[str] | None = None) -> dict[str, float]:
    """Tune ``fused`` (only the tasks named in ``only``, when given) into ``work_dir``; raise when nothing could be measured."""
    from tvm.s_tir import meta_schedule as ms

    tasks = ms.relax_integration.extract_tasks(fused, target)
    chosen = [t for t in tasks if (not cfg.tasks or any(op in t.task_name for op in cfg.tasks)) and (only is None or t.task_name in only)]
    groups: dict[int, list] = {}  # trials per task -> its tasks; MetaSchedule takes one cap per run
    for task in chosen:
        groups.setdefault(next((n for op, n in cfg.task_trials.items() if op in task.task_name), cfg.trials_per_task), []).append(task)
    budget = min(cfg.total_trials, sum(n * len(group) for n, group in groups.items()))
    log.info("tune: %d of %d tasks (%s), budget %d trials (%s)", len(chosen), len(tasks), ", ".join(cfg.tasks) or "all",
             budget, ", ".join(f"{len(group)} tasks x {n}" for n, group in sorted(groups.items(), reverse=True)))
    progress = builder.progress(cfg, threads, budget)
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
        _close_log_files(work_dir)
    valid = [r for r in database.get_all_tuning_records() if r.run_secs and np.isfinite(float(r.run_secs[0])) and float(r.run_secs[0]) < records.FAILED_SECS]
    if progress.done and not valid:
        raise RuntimeError(
            f"TVM tuning measured nothing: {progress.done} candidates, {progress.built} built, none ran; "
            f"builder said: {progress.errors[0] if progress.errors else 'no error reported'}; "
            "raise compile.builder_timeout_s or check the target"
        )
    return {"tune_trials_run": progress.done, "tune_seconds": time.perf_counter() - t0,
            "tune_tasks": len(chosen), "tune_tasks_total": len(tasks), "tune_failed_batches": progress.dead_batches}


def _close_log_files(work_dir: Path) -> None:
    """Detach MetaSchedule's file handlers that write into ``work_dir``.

    MetaSchedule leaves them on its loggers after tuning. Hydra reconfigures logging at every job
    of a sweep, which closes them; a closed ``FileHandler`` reopens its file at the next record, and
    by then ``work_dir`` has been renamed into the cache: the next tuning in the same process died
    with FileNotFoundError on the old path (two graphs tuned in one ``published_table`` sweep on a
    CPU without shipped records). Left open instead, they would append to the sealed database."""
    folder = Path(work_dir).resolve()
    names = [n for n in logging.root.manager.loggerDict if n.startswith("tvm.s_tir.meta_schedule")]
    for logger in map(logging.getLogger, names):
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve().is_relative_to(folder):
                logger.removeHandler(handler)
                handler.close()


def database(fused, target, cfg: CompileConfig, threads: int) -> tuple[Path | None, dict[str, float]]:
    """The tuning database for this graph and target: cached, else seeded from shipped records, else tuned now."""
    if cfg.database == "auto" and cfg.total_trials == 0:
        return None, {"tune_db_hit": 0, "tune_trials_run": 0, "tune_seconds": 0.0, "tune_db_source": "untuned"}
    if cfg.database != "auto":
        path = Path(cfg.database).expanduser()
        _check_target(path, target)
        if (problem := cache.damage(path)) is not None and (path / cache.SEAL).is_file():
            raise ConfigError(f"compile.database={path} is damaged ({problem}); restore it or use compile.database=auto")
        return path, {"tune_db_hit": 1, "tune_trials_run": 0, "tune_seconds": 0.0, **_source(path)}
    root = cache_root(cfg)
    path = root / key_of(fused, target, cfg)
    with _locked(root / f"{path.name}.lock"):
        if (path / cache.SEAL).is_file() and (problem := cache.damage(path)) is not None:
            log.error("tune: database %s is damaged (%s); removed and tuned again", path, problem)
            shutil.rmtree(path, ignore_errors=True)
        if (path / TARGET_FILE).is_file():
            _check_target(path, target)
            log.info("tune: reusing database %s", path)
            return path, {"tune_db_hit": 1, "tune_trials_run": 0, "tune_seconds": 0.0, **_source(path)}
        work = Path(tempfile.mkdtemp(prefix=f"{path.name}.", dir=root))
        try:
            stats = _build(fused, target, cfg, work, threads)
            (work / TARGET_FILE).write_text(json.dumps(target_record(target), sort_keys=True))
            cache.seal(work)
            work.rename(path)  # atomic: a reader never sees a half-written database
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return path, {"tune_db_hit": 0, **stats}


def _build(fused, target, cfg: CompileConfig, work: Path, threads: int) -> dict[str, Any]:
    """Fill ``work``: from the nearest shipped records (as they are, or re-measured here), then tune
    what they leave; write the database's provenance beside it and return the metrics."""
    gkey, folder = graph_key(fused, cfg), records_dir(cfg)
    found = records.nearest(folder, gkey, target, target_record(target))
    stats: dict[str, Any] = {"tune_trials_run": 0, "tune_seconds": 0.0}
    if found is None:
        log.info("tune: no shipped records of this graph for %s (graph key %s in %s); tuning", records.isa_of(target), gkey,
                 folder or "compile.records=none")
        source, missing = "tuned", None
    elif found[1] == "exact":
        source, missing = "exact", records.materialize(found[0], fused, target, work)
        log.info("tune: seeded the database from shipped records %s (tuned for this target on this CPU)", found[0].name)
    else:
        source = "transferred"
        missing, transferred = records.transfer(found[0], fused, target, cfg, work, threads)
        stats.update(transferred)
    if missing is None or missing:
        stats.update(search(fused, target, cfg, work, threads, only=missing))
    stats["tune_tasks_tuned"] = stats.get("tune_tasks", 0)
    facts = {"graph_key": gkey, "tune_db_source": source, "tune_records": found[0].name if found else "none",
             "tune_tasks_tuned": stats["tune_tasks_tuned"], "tune_tasks_transferred": stats.get("tune_tasks_transferred", 0)}
    (work / records.SOURCE_FILE).write_text(json.dumps(facts, sort_keys=True))
    return {**stats, **_source(work)}


def _source(path: Path) -> dict[str, Any]:
    """Where a database's records came from (logged with every trial that uses it, cache hits too)."""
    facts = json.loads((path / records.SOURCE_FILE).read_text()) if (path / records.SOURCE_FILE).is_file() else {}
    return {"tune_db_source": facts.get("tune_db_source", "unknown"), "tune_records": facts.get("tune_records", "unknown"),
            "tune_tasks_tuned": facts.get("tune_tasks_tuned", -1), "tune_tasks_transferred": facts.get("tune_tasks_transferred", -1)}


def records_dir(cfg: CompileConfig) -> Path | None:
    if cfg.records == "none":
        return None
    return records.SHIPPED if cfg.records == "auto" else Path(cfg.records).expanduser()


def target_record(target) -> dict:
    """The target as plain JSON values (TVM returns its own map and string types)."""
    return json.loads(json.dumps({str(k): v for k, v in target.export().items()}, default=str))


def _check_target(path: Path, target) -> None:
    recorded = path / TARGET_FILE
    if not recorded.is_file():
        raise ConfigError(f"compile.database={path} is not a lpr_sweep tuning database (no {TARGET_FILE}); use auto")
    want, have = target_record(target), json.loads(recorded.read_text())
    if have != want:
        raise ConfigError(
            f"tuning database {path} was tuned for target {have.get('mcpu', have.get('kind'))} "
            f"(num-cores {have.get('num-cores')}), not {want.get('mcpu', want.get('kind'))} "
            f"(num-cores {want.get('num-cores')}); it is never applied to another target: use compile.database=auto"
        )
