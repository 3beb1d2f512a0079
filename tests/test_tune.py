"""The tuning database on a tiny ONNX model with a two-trial budget: one real tuning run, its reuse,
shipped records, another target's database, a run that builds nothing; and the CI check that the
shipped records cover every TVM preset's graph."""
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
    assert again == {"tune_db_hit": 1, "tune_trials_run": 0, "tune_seconds": 0.0}
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


def test_shipped_records_seed_a_fresh_cache_without_tuning(tiny_onnx, tuned, tmp_path):
    target = compile.target_of(tvm_cfg(tmp_path), 2)
    prefix = f"{tune.target_record(target)['mcpu']}-2c"
    (tmp_path / "records").mkdir()
    for name in (f"{prefix}-0ldgraph.jsonl", "othercpu-2c-0ldgraph.jsonl"):
        (tmp_path / "records" / name).write_text("{}\n")
    records.main(["ship", str(tuned[0] / "cache"), "--to", str(tmp_path / "records")])
    (shipped,) = (tmp_path / "records").glob(f"{prefix}-*.jsonl")  # the older graph's records are replaced...
    assert (tmp_path / "records" / "othercpu-2c-0ldgraph.jsonl").is_file()  # ...another CPU's are kept
    header, *rows = [json.loads(line) for line in shipped.read_text().splitlines()]
    assert shipped.name.endswith(f"c-{header['key']}.jsonl") and len(rows) == 2  # one per task: conv, mean
    compiled, stats = compile.run(tiny_onnx, tvm_cfg(tmp_path, records=str(tmp_path / "records")), TVM_HW, tmp_path / "out")
    assert stats == {"tune_db_hit": 0, "tune_db_shipped": 1, "tune_trials_run": 0, "tune_seconds": 0.0}
    check_tvm_matches_ort(tiny_onnx, compiled)
    # records that miss a task are not used: the graph would silently run that task untuned
    shipped.write_text("\n".join(shipped.read_text().splitlines()[:-1]) + "\n")
    fused, _, _ = compile.graph(tiny_onnx.path, target, False, "NCHW")
    missing = records.materialize(shipped, fused, target, tmp_path / "partial")
    assert len(missing) == 1 and missing[0] in {"mean", "fused_conv2d_add_relu"}
    shipped.write_text("{not json\n")
    with pytest.raises(ConfigError, match=r"is not a tuning records file .*make records.*compile.records=none"):
        compile.run(tiny_onnx, tvm_cfg(tmp_path, records=str(tmp_path / "records"), cache_dir=str(tmp_path / "c2")), TVM_HW, tmp_path / "o2")


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
    """The CI check on lpr_sweep/compile_records: a graph change (export, pruning, a TVM upgrade) that
    would silently run untuned schedules fails here. Fix: `make records` on the reference CPU."""
    shipped = sorted(records.SHIPPED.glob("*.jsonl"))
    assert shipped, f"no shipped records in {records.SHIPPED}; run `make records`"
    targets = {json.dumps(json.loads(f.read_text().splitlines()[0])["record_target"], sort_keys=True) for f in shipped}
    presets = _tvm_presets()
    assert {"mlc", "prune_mlc", "prune_structured_mlc"} <= set(presets)
    for name in presets:
        conf = config.validate(compose_cfg([f"optimization={name}", f"data.root={real_root}", "cache.enabled=false"]))
        model_file, *_ = pipeline._export(conf, pipeline.weights_of(conf, real_root), conf.prune, tmp_path / name,
                                          pipeline.Stages(name))
        for spec in targets:
            target = tvm.target.Target(json.loads(spec))
            fused, _, _ = compile.graph(model_file.path, target, conf.compile.cpu_weight_prepack, conf.compile.layout)
            key = tune.key_of(fused, target, conf.compile)
            found = list(records.SHIPPED.glob(f"*-{key}.jsonl"))
            assert found, f"optimization={name}: no shipped records for its graph on {spec} (key {key}); run `make records`"
            assert records.materialize(found[0], fused, target, tmp_path / name / key) == [], f"optimization={name}"
