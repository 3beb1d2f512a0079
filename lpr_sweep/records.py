"""Shipped TVM tuning records (like TVM's old TopHub): the best schedule of every task of this
project's graphs, per ISA family, in ``compile_records/``: one reviewable JSON-lines file per graph
and tuning machine, named ``<isa>-<cpu>-<cores>c-<graph key>.jsonl``.

A file is keyed by what its schedules depend on: the graph (``tune.graph_key``: structure, TVM
version and budget; no target) and the ISA family whose vector instructions the kernels use
(``isa_of``), not LLVM's CPU name, which differs between machines with the same instructions.
``nearest`` picks the file a target uses: ``exact`` when it was tuned for this very target on a
CPU that LLVM names like this one (its times stand), else ``transferred``: the nearest file of the
same ISA family, whose schedules the compile stage re-measures here before it trusts them
(``transfer``). ``ship`` (``python -m lpr_sweep.records ship CACHE_DIR``, run by ``make
records``) writes the files from tuned databases.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from lpr_sweep import ConfigError, builder, cache

log = logging.getLogger(__name__)
TARGET_FILE = "target.json"  # beside every tuning database: the target it was tuned for
SOURCE_FILE = "source.json"  # beside every tuning database: its graph key and where its records came from
SHIPPED = Path(__file__).with_name("compile_records")
# The families, widest first: a target belongs to the first whose features LLVM reports for it.
# fp32 kernels differ by vector width (AVX-512 or AVX2 with FMA); VNNI decides the int8 ones.
ISA_FAMILIES = {"avx512-vnni": ("avx512f", "avx512bw", "avx512vnni"), "avx512": ("avx512f", "avx512bw"), "avx2-fma": ("avx2", "fma")}
FAILED_SECS = 1e9  # MetaSchedule marks a failed build or run with 1e10 s


def isa_of(target) -> str:
    """The ISA family of an LLVM target ("other" when it has none of them, e.g. ARM or SSE-only)."""
    from tvm.target import codegen

    features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
    return next((name for name, needs in ISA_FAMILIES.items() if set(needs) <= features), "other")


def host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def header_of(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        header = json.loads(first)
        header["graph_key"], header["isa"], header["record_target"]  # noqa: B018  (a file before ISA keys lacks them)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a tuning records file (its first line is no header with graph_key, isa and "
                          "record_target); regenerate it with `make records` or set compile.records=none") from None
    return header


def nearest(folder: Path | None, graph_key: str, target, target_json: dict) -> tuple[Path, str] | None:
    """The records file for this graph that ``target`` uses and how: (file, "exact" or "transferred"); None: tune."""
    if not folder or not folder.is_dir():
        return None
    isa = isa_of(target)
    same = [(p, h) for p in sorted(folder.glob(f"*-{graph_key}.jsonl")) if (h := header_of(p))["isa"] == isa]
    if not same:
        return None
    mcpu, cores = target_json.get("mcpu"), target_json.get("num-cores")

    def distance(item):  # this target on this CPU, then the same LLVM CPU, then the same core count
        h = item[1]
        return (h["target"] != target_json or h.get("measured_on") != host_cpu(), h["target"].get("mcpu") != mcpu,
                h["target"].get("num-cores") != cores)

    path, header = min(same, key=distance)
    return path, "transferred" if any(distance((path, header))) else "exact"


def materialize(records: Path, fused, target, work: Path) -> list[str]:
    """Write a MetaSchedule database for ``fused`` into ``work`` from a records file; return the
    names of the graph's tasks that have no record (an empty list: every task is covered)."""
    from tvm.s_tir import meta_schedule as ms

    work.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(work))
    missing = []
    try:
        header, *rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
        by_workload = {row["workload"]: row for row in rows}
        for task in ms.relax_integration.extract_tasks(fused, target):
            workload = database.commit_workload(task.dispatched[0])
            row = by_workload.get(workload.as_json()[0])  # the workload's structural hash
            if row is None:
                missing.append(task.task_name)
                continue
            trace, run_secs, args_info = row["record"]
            record = [trace, run_secs, header["record_target"], args_info]
            database.commit_tuning_record(ms.database.TuningRecord.from_json(record, workload))
    except (ValueError, KeyError, TypeError) as e:  # json's and TVM's parse errors are ValueErrors
        raise ConfigError(f"{records} is not a tuning records file ({str(e).splitlines()[0][:120]}); "
                          "regenerate it with `make records` or set compile.records=none") from None
    return missing


def transfer(shipped: Path, fused, target, cfg: Any, work: Path, threads: int) -> tuple[list[str], dict[str, float]]:
    """Re-measure ``shipped``'s schedules (another CPU's) on this one and commit them into ``work``
    with this target and the times measured here; return the tasks left to tune (no record, or a
    schedule that no longer builds or runs) and the metrics.

    A schedule is a program transformation, not machine code, so another CPU's schedules of the same
    ISA family build here; their speed here is what this CPU measures, never the file's figure."""
    from tvm.s_tir import Schedule
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()
    staged = work / "shipped"
    missing = materialize(shipped, fused, target, staged)
    source, database = ms.database.JSONDatabase(work_dir=str(staged)), ms.database.JSONDatabase(work_dir=str(work))
    by_workload = {r.workload.as_json()[0]: r for r in source.get_all_tuning_records()}
    todo = []  # (task, workload, schedule with the shipped trace applied, args_info) to measure here
    for task in ms.relax_integration.extract_tasks(fused, target):
        if task.task_name in missing:
            continue
        workload = database.commit_workload(task.dispatched[0])
        shipped_record = by_workload[workload.as_json()[0]]
        if min(float(t) for t in shipped_record.run_secs) >= FAILED_SECS:
            # unmeasurable where it was tuned (a `take` of random indices): TVM runs its default schedule
            database.commit_tuning_record(ms.database.TuningRecord(shipped_record.trace, workload, shipped_record.run_secs, target,
                                                                   shipped_record.args_info))
            continue
        sch = Schedule(task.dispatched[0])
        shipped_record.trace.apply_to_schedule(sch, remove_postproc=False)
        todo.append((task, workload, sch, ms.arg_info.TensorInfo.from_prim_func(sch.mod["main"])))
    pool = builder.progress(cfg, threads, len(todo), batch=len(todo))  # every shipped schedule in one build call
    try:
        built = pool.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch, _ in todo])
    finally:
        pool.close()
    runner = ms.runner.LocalRunner()
    for (task, workload, sch, args_info), b in zip(todo, built):
        secs = None
        if b.error_msg is None:
            result = runner.run([ms.runner.RunnerInput(b.artifact_path, device_type="cpu", args_info=args_info)])[0].result()
            secs = None if result.error_msg else [float(t) for t in result.run_secs]
            if result.error_msg:
                log.warning("tune: %s", str(result.error_msg).strip().splitlines()[-1][:300])
            shutil.rmtree(Path(b.artifact_path).parent, ignore_errors=True)
        if secs is None or min(secs) >= FAILED_SECS:
            log.warning("tune: the shipped schedule of %s does not %s here; tuning it", task.task_name, "build" if b.error_msg else "run")
            missing.append(task.task_name)
            continue
        database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, secs, target, args_info))
    shutil.rmtree(staged, ignore_errors=True)
    log.info("tune: re-measured %d shipped schedules from %s on this CPU in %.0f s; %d tasks left to tune",
             len(todo), shipped.name, time.perf_counter() - t0, len(missing))
    return missing, {"tune_tasks_transferred": len(todo) - len([t for t, *_ in todo if t.task_name in missing]),
                     "tune_transfer_seconds": time.perf_counter() - t0}


def ship(database: Path, out: Path) -> Path:
    """Write the best measured record of every task of a tuned database as
    ``out/<isa>-<cpu>-<cores>c-<graph key>.jsonl``: a header line, then one line per task (slowest
    first; unmeasurable ones last, ``mean_us`` null), small enough to review in a diff."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    source = database / SOURCE_FILE
    if not source.is_file():
        raise ConfigError(f"{database} was tuned before databases recorded their graph key; tune it again (make records)")
    best: dict[str, tuple[float, list]] = {}
    for record in ms.database.JSONDatabase(work_dir=str(database), allow_missing=False).get_all_tuning_records():
        secs = [float(t) for t in record.run_secs or []]
        # A failed build or run (e.g. a `take` whose random test indices fall out of range) keeps a
        # failed record, which TVM never applies: that task runs its default schedule, as it does
        # from the tuned database. Shipping it says the task was tuned, not forgotten.
        mean = float(np.mean(secs)) if secs and all(np.isfinite(secs)) and max(secs) < FAILED_SECS else float("inf")
        workload = record.workload.as_json()[0]
        if workload not in best or mean < best[workload][0]:
            best[workload] = (mean, record.as_json())
    if not any(np.isfinite(mean) for mean, _ in best.values()):
        raise ConfigError(f"{database} holds no measured tuning record; tune it first (make records)")
    target = json.loads((database / TARGET_FILE).read_text())
    record_target = next(iter(best.values()))[1][2]
    graph_key = json.loads(source.read_text())["graph_key"]
    isa = isa_of(tvm.target.Target(record_target))
    header = {"graph_key": graph_key, "isa": isa, "tvm": tvm.__version__, "target": target, "record_target": record_target,
              "measured_on": host_cpu(), "regenerate": "make records"}
    rows = [{"workload": w, "mean_us": round(mean * 1e6, 2) if np.isfinite(mean) else None, "args": [a[2] for a in rec[3]],
             "record": [rec[0], rec[1], rec[3]]} for w, (mean, rec) in sorted(best.items(), key=lambda kv: (np.isinf(kv[1][0]), -kv[1][0]))]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{prefix(isa, target)}-{graph_key}.jsonl"
    path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in [header, *rows]))
    return path


def prefix(isa: str, target: dict) -> str:
    return f"{isa}-{target.get('mcpu', target['kind'])}-{target.get('num-cores')}c"


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.records", description="TVM tuning records.")
    sub = parser.add_subparsers(dest="command", required=True)
    ship_cmd = sub.add_parser("ship", help="write the shipped records from every tuned database in a cache folder "
                                           "(replacing older records for the same ISA family, CPU and core count)")
    ship_cmd.add_argument("cache_dir", type=Path, help="a compile.cache_dir that holds tuned databases")
    ship_cmd.add_argument("--to", type=Path, default=SHIPPED, help=f"where the records go (default {SHIPPED})")
    args = parser.parse_args(argv)
    databases = sorted(p for p in args.cache_dir.glob("*") if (p / cache.SEAL).is_file() and (p / TARGET_FILE).is_file())
    if not databases:
        parser.error(f"no tuned database in {args.cache_dir}; tune first (make records)")
    try:
        written = [ship(database, args.to) for database in databases]
    except ConfigError as e:
        parser.error(str(e))
    for stale in {p for w in written for p in args.to.glob(w.name.rsplit("-", 1)[0] + "-*.jsonl")} - set(written):
        stale.unlink()  # the same ISA, CPU and core count, an older graph: nothing would ever match it again
        print("removed", stale)
    print("\n".join(map(str, written)))


if __name__ == "__main__":
    main()
