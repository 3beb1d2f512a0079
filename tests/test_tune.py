"""The tuning database on a tiny ONNX model with a two-trial budget: one real tuning run, its reuse,
shipped records (exact, transferred from another CPU of the ISA family, partial, another family),
another target's database, a run that builds nothing; and the CI check that the shipped records
cover every TVM preset's graph for every ISA family they ship for."""
import json
import shutil
from pathlib import Path

import pytest
import tvm
from conftest import REPO, TVM_HW, check_tvm_matches_ort, compose_cfg, tvm_cfg

from lpr_sweep import ConfigError, cache, compile, config, pipeline, records, tune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tuned(tiny_onnx, tmp_path_factory):
    """One real tuning run (the slowest thing here), shared: (its folder, compiled model, stats)."""
    tmp_path = tmp_path_factory.mktemp("tuned")
    first, stats = compile.run(tiny_onnx, tvm_cfg(tmp_path), TVM_HW, tmp_path)
    return tmp_path, first, stats


def test_tuned_compile_matches_ort_and_reuses_its_database(tiny_onnx, tuned):
    tmp_path, first, stats = tuned
    cfg = tvm_cfg(tmp_path)
    assert stats["tune_db_hit"] == 0 and stats["tune_trials_run"] == 2 and stats["tune_failed_batches"] == 0
    assert stats["tune_tasks"] == stats["tune_tasks_total"] == 2
    check_tvm_matches_ort(tiny_onnx, first)
    (database,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert (database / "database_tuning_record.json").stat().st_size > 0
    second, again = compile.run(tiny_onnx, cfg, TVM_HW, tmp_path / "again")
    assert again == {"tune_db_hit": 1, "tune_trials_run": 0, "tune_seconds": 0.0, "tune_db_source": "tuned",
                     "tune_records": "none", "tune_tasks_tuned": 2, "tune_tasks_transferred": 0}
    check_tvm_matches_ort(tiny_onnx, second)


def test_a_second_tuning_in_the_same_process_survives_hydras_logging_reset(tiny_onnx, tuned, tmp_path):
    """Hydra reconfigures logging at each job of a sweep, which closes MetaSchedule's log files; the
    first tuning's handlers must not reopen the folder that was renamed into the cache."""
    import logging.config

    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})  # what Hydra does per job
    cfg = tvm_cfg(tmp_path, layout="NHWC", tasks=["mean"])  # another graph: tuned again, in this process (one task: CI time)
    _, stats = compile.run(tiny_onnx, cfg, TVM_HW, tmp_path / "out")
    assert stats["tune_db_hit"] == 0 and stats["tune_trials_run"] == 1
    for database in [p for p in (tuned[0] / "cache").iterdir() if p.is_dir()]:
        assert cache.damage(database) is None  # nothing appended to the first, sealed database


def _same_isa_other_cpu(target) -> str:
    """Another LLVM CPU with this target's ISA family: records tuned for it must transfer here."""
    isa = records.isa_of(target)
    names = ["sapphirerapids", "icelake-server", "znver4", "cascadelake", "skylake-avx512", "znver3", "haswell", "znver2"]
    return next(n for n in names if n != target.attrs["mcpu"] and records.isa_of(tvm.target.Target({"kind": "llvm", "mcpu": n})) == isa)


def _rewrite_header(path: Path, **changes) -> None:
    header, *rows = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps({**json.loads(header), **changes}), *rows]) + "\n")


def test_shipped_records_seed_a_fresh_cache_exactly_or_by_transfer(tiny_onnx, tuned, tmp_path):
    target = compile.target_of(tvm_cfg(tmp_path), 2)
    isa, mcpu = records.isa_of(target), str(target.attrs["mcpu"])
    folder = tmp_path / "records"
    folder.mkdir()
    for name in (f"{isa}-{mcpu}-2c-0ldgraph.jsonl", f"{isa}-othercpu-2c-0ldgraph.jsonl"):
        (folder / name).write_text("{}\n")
    records.main(["ship", str(tuned[0] / "cache"), "--to", str(folder)])
    (shipped,) = folder.glob(f"{isa}-{mcpu}-2c-*.jsonl")  # the older graph's records are replaced...
    assert (folder / f"{isa}-othercpu-2c-0ldgraph.jsonl").is_file()  # ...another CPU's are kept
    (folder / f"{isa}-othercpu-2c-0ldgraph.jsonl").unlink()
    header, *rows = [json.loads(line) for line in shipped.read_text().splitlines()]
    assert shipped.name.endswith(f"-{header['graph_key']}.jsonl") and len(rows) == 2  # one per task: conv, mean
    assert header["isa"] == isa and header["measured_on"] == records.host_cpu()

    def run(tag: str, **kw):
        return compile.run(tiny_onnx, tvm_cfg(tmp_path, records=str(folder), cache_dir=str(tmp_path / tag), **kw), TVM_HW, tmp_path / f"o-{tag}")

    # tuned for this target on this CPU: used as it is
    compiled, stats = run("exact")
    assert stats == {"tune_db_hit": 0, "tune_trials_run": 0, "tune_seconds": 0.0, "tune_db_source": "exact",
                     "tune_records": shipped.name, "tune_tasks_tuned": 0, "tune_tasks_transferred": 0}
    check_tvm_matches_ort(tiny_onnx, compiled)

    # tuned on another CPU of this ISA family: its schedules re-measured here, nothing tuned
    other = _same_isa_other_cpu(target)
    _rewrite_header(shipped, target={**header["target"], "mcpu": other}, measured_on=other)
    compiled, stats = run("transferred")
    assert (stats["tune_db_source"], stats["tune_tasks_transferred"], stats["tune_tasks_tuned"], stats["tune_trials_run"]) == ("transferred", 2, 0, 0)
    check_tvm_matches_ort(tiny_onnx, compiled)
    (database,) = [p for p in (tmp_path / "transferred").iterdir() if p.is_dir()]
    times = [float(r.run_secs[0]) for r in ms_records(database)]
    assert all(0 < t < 1 for t in times) and {json.dumps(r.target.export()["mcpu"]) for r in ms_records(database)} == {json.dumps(mcpu)}
    assert sorted(round(t * 1e6, 2) for t in times) != sorted(r["mean_us"] for r in rows)  # measured here, not copied

    # a file that misses a task: the rest transfer, only that task is tuned
    shipped.write_text("\n".join(shipped.read_text().splitlines()[:-1]) + "\n")
    compiled, stats = run("partial")
    assert (stats["tune_db_source"], stats["tune_tasks_transferred"], stats["tune_tasks_tuned"], stats["tune_trials_run"]) == ("transferred", 1, 1, 1)
    check_tvm_matches_ort(tiny_onnx, compiled)

    # another ISA family's records are never used
    _rewrite_header(shipped, isa="avx2-fma" if isa != "avx2-fma" else "avx512-vnni")
    _, stats = run("other-isa")
    assert (stats["tune_db_source"], stats["tune_records"], stats["tune_tasks_tuned"]) == ("tuned", "none", 2)

    shipped.write_text("{not json\n")
    with pytest.raises(ConfigError, match=r"is not a tuning records file .*make records.*compile.records=none"):
        run("broken")


def ms_records(database: Path) -> list:
    from tvm.s_tir import meta_schedule as ms

    return list(ms.database.JSONDatabase(work_dir=str(database), allow_missing=False).get_all_tuning_records())


def test_ship_refuses_a_folder_without_tuned_databases(tmp_path, capsys):
    with pytest.raises(SystemExit):
        records.main(["ship", str(tmp_path)])
    assert "no tuned database in" in capsys.readouterr().err


def test_a_tuning_run_that_builds_nothing_raises_with_the_builders_message(tiny_onnx, tmp_path):
    with pytest.raises(RuntimeError, match=r"TVM tuning measured nothing: 1 candidates, 0 built, none ran; builder said: \S"):
        compile.run(tiny_onnx, tvm_cfg(tmp_path, builder_timeout_s=0.01, tasks=["mean"]), TVM_HW, tmp_path)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # no half database left behind


def test_a_database_from_another_target_is_never_applied(tiny_onnx, tuned, tmp_path):
    (tuned_db,) = [p for p in (tuned[0] / "cache").iterdir() if p.is_dir()]
    database = Path(shutil.copytree(tuned_db, tmp_path / "cache" / tuned_db.name))
    recorded = json.loads((database / records.TARGET_FILE).read_text())
    (database / records.TARGET_FILE).write_text(json.dumps({**recorded, "mcpu": "cascadelake"}))
    with pytest.raises(ConfigError, match="was tuned for target cascadelake .* never applied to another target"):
        compile.run(tiny_onnx, tvm_cfg(tmp_path, database=str(database)), TVM_HW, tmp_path)


def _tvm_presets() -> list[str]:
    names = sorted(p.stem for p in (REPO / "conf" / "optimization").glob("*.yaml"))
    return [n for n in names if compose_cfg([f"optimization={n}"]).runtime.name == "tvm"]


def test_the_shipped_records_cover_every_task_of_every_tvm_presets_graph(real_root, tmp_path):
    """The CI check on lpr_sweep/compile_records: for every ISA family records ship for, every TVM
    preset's graph has a file of its graph key that covers each of its tasks. A graph change (export,
    pruning, a TVM upgrade) that would silently leave users tuning from nothing fails here. Fix:
    `make records` (docs/optimizations.md, "Shipped tuning records")."""
    shipped = sorted(records.SHIPPED.glob("*.jsonl"))
    assert shipped, f"no shipped records in {records.SHIPPED}; run `make records`"
    targets = {}  # ISA family -> a target it was tuned for
    for f in shipped:
        header = records.header_of(f)
        targets.setdefault(header["isa"], tvm.target.Target(header["record_target"]))
        assert records.isa_of(targets[header["isa"]]) == header["isa"] and f.name.startswith(header["isa"] + "-"), f.name
    assert {"avx512-vnni", "avx2-fma"} <= set(targets), f"records ship for {sorted(targets)}; both x86 families are needed"
    presets = _tvm_presets()
    assert {"mlc", "prune_mlc", "prune_structured_mlc"} <= set(presets)

    def graph_key(name: str, *overrides: str):
        conf = config.validate(compose_cfg([f"optimization={name}", f"data.root={real_root}", "cache.enabled=false", *overrides]))
        model_file, *_ = pipeline._export(conf, conf.model.file(real_root), conf.prune, tmp_path / name / "-".join(overrides),
                                          pipeline.Stages(name))
        fused, _, _ = compile.graph(model_file.path, target, conf.compile.cpu_weight_prepack, conf.compile.layout)
        return fused, tune.graph_key(fused, conf.compile)

    for isa, target in targets.items():
        for name in presets:
            fused, key = graph_key(name)
            found = list(records.SHIPPED.glob(f"{isa}-*-{key}.jsonl"))
            assert found, f"optimization={name}: no shipped {isa} records for its graph (graph key {key}); run `make records`"
            assert records.materialize(found[0], fused, target, tmp_path / name / key) == [], f"optimization={name}"
    # the check can fail: the same preset with its channel selection exported another way is another graph
    _, changed = graph_key("mlc", "prune.split_producers=true")
    assert not list(records.SHIPPED.glob(f"*-{changed}.jsonl"))
