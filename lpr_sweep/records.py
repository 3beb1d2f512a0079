"""Shipped TVM tuning records (like TVM's old TopHub): the best schedule of every task of this
project's graphs for the reference CPU, in ``compile_records/``, one reviewable JSON-lines file per
graph named ``<cpu>-<cores>c-<key>.jsonl`` with the compile cache's key.

``seed`` turns a file into the MetaSchedule database the compile stage applies; ``ship`` (``python
-m lpr_sweep.records ship CACHE_DIR``, run by ``make records``) writes the files from tuned databases.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from lpr_sweep import ConfigError, cache

log = logging.getLogger(__name__)
TARGET_FILE = "target.json"  # beside every tuning database: the target it was tuned for
SHIPPED = Path(__file__).with_name("compile_records")


def seed(folder: Path | None, fused, target, key: str, work: Path) -> dict[str, float] | None:
    """Seed ``work`` from the records of this key in ``folder``, when they cover every task; else None (tune)."""
    found = sorted(folder.glob(f"*-{key}.jsonl")) if folder and folder.is_dir() else []
    if not found:
        log.info("tune: no shipped records for this graph and target (key %s in %s); tuning", key, folder or "compile.records=none")
        return None
    try:
        missing = materialize(found[0], fused, target, work)
    except (ValueError, KeyError, TypeError) as e:  # json's and TVM's parse errors are ValueErrors
        raise ConfigError(f"{found[0]} is not a tuning records file ({str(e).splitlines()[0][:120]}); "
                          "regenerate it with `make records` or set compile.records=none") from None
    if missing:
        log.warning("tune: %s lacks records for %d tasks (%s); tuning instead", found[0], len(missing), ", ".join(missing))
        for name in ("database_workload.json", "database_tuning_record.json"):
            (work / name).unlink(missing_ok=True)
        return None
    log.info("tune: seeded the database from shipped records %s; no tuning", found[0])
    return {"tune_db_shipped": 1, "tune_trials_run": 0, "tune_seconds": 0.0}


def materialize(records: Path, fused, target, work: Path) -> list[str]:
    """Write a MetaSchedule database for ``fused`` into ``work`` from a records file; return the
    names of the graph's tasks that have no record (an empty list: every task is covered)."""
    from tvm.s_tir import meta_schedule as ms

    header, *rows = [json.loads(line) for line in records.read_text().splitlines() if line.strip()]
    by_workload = {row["workload"]: row for row in rows}
    work.mkdir(parents=True, exist_ok=True)
    database = ms.database.JSONDatabase(work_dir=str(work))
    missing = []
    for task in ms.relax_integration.extract_tasks(fused, target):
        workload = database.commit_workload(task.dispatched[0])
        row = by_workload.get(workload.as_json()[0])  # the workload's structural hash
        if row is None:
            missing.append(task.task_name)
            continue
        trace, run_secs, args_info = row["record"]
        record = [trace, run_secs, header["record_target"], args_info]
        database.commit_tuning_record(ms.database.TuningRecord.from_json(record, workload))
    return missing


def ship(database: Path, out: Path) -> Path:
    """Write the best measured record of every task of a tuned database as ``out/<cpu>-<cores>c-<key>.jsonl``:
    a header line, then one line per task (slowest first; unmeasurable ones last, ``mean_us`` null),
    small enough to review in a diff."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    best: dict[str, tuple[float, list]] = {}
    for record in ms.database.JSONDatabase(work_dir=str(database), allow_missing=False).get_all_tuning_records():
        secs = [float(t) for t in record.run_secs or []]
        # 1e10 marks a failed build or run; such a task (e.g. a `take` whose random test indices fall
        # out of range) keeps a failed record, which TVM never applies: it runs its default schedule,
        # as it does from the tuned database. Shipping it says the task was tuned, not forgotten.
        mean = float(np.mean(secs)) if secs and all(np.isfinite(secs)) and max(secs) < 1e9 else float("inf")
        workload = record.workload.as_json()[0]
        if workload not in best or mean < best[workload][0]:
            best[workload] = (mean, record.as_json())
    if not any(np.isfinite(mean) for mean, _ in best.values()):
        raise ConfigError(f"{database} holds no measured tuning record; tune it first (make records)")
    target = json.loads((database / TARGET_FILE).read_text())
    header = {"key": database.name, "tvm": tvm.__version__, "target": target,
              "record_target": next(iter(best.values()))[1][2], "regenerate": "make records"}
    rows = [{"workload": w, "mean_us": round(mean * 1e6, 2) if np.isfinite(mean) else None, "args": [a[2] for a in rec[3]],
             "record": [rec[0], rec[1], rec[3]]} for w, (mean, rec) in sorted(best.items(), key=lambda kv: (np.isinf(kv[1][0]), -kv[1][0]))]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{target.get('mcpu', target['kind'])}-{target.get('num-cores')}c-{database.name}.jsonl"
    path.write_text("".join(json.dumps(line, separators=(",", ":")) + "\n" for line in [header, *rows]))
    return path


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.records", description="TVM tuning records.")
    sub = parser.add_subparsers(dest="command", required=True)
    ship_cmd = sub.add_parser("ship", help="write the shipped records from every tuned database in a cache folder "
                                           "(replacing older records for the same CPU and core count)")
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
        stale.unlink()  # the same CPU and core count, an older graph: nothing would ever match it again
        print("removed", stale)
    print("\n".join(map(str, written)))


if __name__ == "__main__":
    main()
