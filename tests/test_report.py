import os
import shutil
import subprocess
import sys
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
import mlflow
from mlflow import MlflowClient

from lpr_sweep import decision, report, tracking
from lpr_sweep.selection import Rule, Trial


def _t(name, acc, speed, size=1e6, status="FINISHED", half=0.05, **params):
    metrics = {"accuracy": acc, "accuracy_ci_low": acc - 0.02, "accuracy_ci_high": acc + 0.02, "val_accuracy": acc,
               "val_drop_pts": 100 * (0.90 - acc), "drop_pts": 100 * (0.90 - acc), "drop_pts_ci_low": 100 * (0.90 - acc) - 1,
               "drop_pts_ci_high": 100 * (0.90 - acc) + 1, "plates_gained": 1, "plates_lost": 3, "speedup": speed,
               "speedup_ci_low": speed - half, "speedup_ci_high": speed + half, "latency_p50_ms": 4 / speed,
               "latency_ref_p50_ms": 4.0, "size_file_bytes": size}
    return Trial(name, name, status, metrics, {"quant.backend": "none", "prune.ratio": "0.5", **params})


BASE = _t("base", 0.90, 1.0, **{"prune.ratio": "0.0", "optimization.name": "baseline"})
TRIALS = [BASE, _t("b", 0.89, 2.0), _t("e", 0.70, 8.0), _t("f", 0.885, 2.6, size=0.5e6)]


def test_markdown_shows_failed_runs_intervals_noise_and_published_numbers():
    failed = Trial("g", "g", "FAILED", {}, {}, "RuntimeError: boom")
    pruned = _t("p", 0.8, 2.0, half=0.5, **{"optimization.name": "prune"})
    pruned.metrics["bench_noisy"] = 1.0
    busy = _t("busy", 0.8, 2.0, **{"optimization.name": "prune"})
    busy.metrics.update(bench_noisy=1.0, bench_host_busy=1.0, bench_other_cores=0.83)
    sweep = decision.Sweep("parent", None, [BASE, pruned, failed, busy])
    text = report.markdown(sweep, Rule("accuracy"), decision.Decision(BASE, "base"), report.pareto(sweep.trials))
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| ")}
    assert "FAILED: RuntimeError: boom" in rows["g"]
    assert "**champion**" in rows["base"] and "90.0 % · 250 ms · 1.11 MB" in rows["base"]
    assert "| 0.00 [-1.00, 1.00] (noise) |" in rows["base"]  # a drop whose interval holds 0 is named noise
    assert "| 10.00 [9.00, 11.00] |" in rows["p"] and "| 2.00x [1.50, 2.50] noisy |" in rows["p"]
    assert "| 2.00 / 4.00 |" in rows["p"] and "| +1 / -3 |" in rows["p"] and "82.3 % · 143 ms · 0.71 MB" in rows["p"]
    assert "rerun them on a quiet host): p (interval too wide), busy (other processes took 0.83 cores)" in text
    assert "[1] accuracy · latency · size as published by the original course report" in text
    assert "the reference's p50 ranged 4.00-4.00 ms over the trials (0 % apart)" in text and "none did here" in text
    busy.metrics["latency_ref_p50_ms"] = 5.0  # a slow spell of the host while one trial was timed
    text = report.markdown(sweep, Rule("accuracy"), decision.Decision(BASE, "base"), report.pareto(sweep.trials))
    assert "ranged 4.00-5.00 ms over the trials (25 % apart)" in text and "clears the other's by 15 %" in text
    assert "none did here" not in text


def test_plot_is_a_decodable_png(tmp_path):
    sweep = decision.Sweep("parent", None, TRIALS)
    path = report.plot(sweep, TRIALS[1], report.pareto(TRIALS), tmp_path / "r.png")
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 100 and image.std() > 0


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture
def mlstore(tmp_path):
    """Two sweeps in a private store: 'old' (one trial), 'new' (baseline, pruned, failed)."""
    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path}/r.db", artifact_root=str(tmp_path / "a"))
    exp = tracking.experiment_id(cfg)
    client = MlflowClient()
    ids = {}
    sweeps = {
        "old": [("x", 0.99, 1.0, "0.0", "FINISHED")],
        "new": [("base", 0.90, 1.0, "0.0", "FINISHED"), ("p", 0.895, 2.0, "0.5", "FINISHED"), ("q", 0.5, 8.0, "0.9", "FINISHED"),
                ("broken", None, None, "0.7", "FAILED")],
    }
    for sweep, rows in sweeps.items():
        folder = tmp_path / sweep
        folder.mkdir()
        parent = client.create_run(exp, run_name=sweep, tags={tracking.ROLE_TAG: "sweep", "sweep_dir": str(folder)}).info.run_id
        ids[sweep] = parent
        for name, acc, speed, ratio, status in rows:
            run = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent, tracking.ROLE_TAG: "trial"}).info.run_id
            for k, v in {"prune.ratio": ratio, "quant.backend": "none", "optimization.name": "baseline" if name == "base" else "prune",
                         "runtime.name": "onnxruntime", "protocol.n_scored": "900"}.items():
                client.log_param(run, k, v)
            if acc is not None:
                for k, v in _t(name, acc, speed).metrics.items():
                    client.log_metric(run, k, v)
            if name in ("base", "p"):  # the trials that tests register: a stand-in for the logged model
                with mlflow.start_run(run_id=run):
                    info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
                client.set_tag(run, tracking.MODEL_TAG, info.model_uri)
            elif status == "FAILED":
                client.set_tag(run, "error", "ValueError: bad graph")
            client.set_terminated(run, status)
        client.set_terminated(parent)
    return cfg, ids, tmp_path


def _report(cfg, *args):
    """The report without its final: the stand-in models cannot be timed (tests/test_final.py times real ones)."""
    return report.main(["--tracking-uri", cfg.uri, "--no-final", *args])


@pytest.mark.slow
def test_report_writes_logs_and_registers_the_champion(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    assert _report(cfg) == 0  # default rule: fastest within 1 validation pt
    text = (tmp_path / "new" / "report.md").read_text()
    assert "Champion: p (run" in text and "FAILED: ValueError: bad graph" in text
    assert "min_gain=0.05" in text and "Decided on: each trial's own paired speed-up" in text
    assert "is now 'champion' (no champion was registered yet)" in text
    assert (tmp_path / "new" / "report.png").stat().st_size > 0
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(ids["new"])}
    assert {"report.md", "report.png", "final.json"} <= logged
    version = client.get_model_version_by_alias("lpr_sweep", "champion")
    run = client.search_runs([tracking.experiment_id(cfg)], "attributes.run_name = 'p'")[0]
    assert version.source == run.data.tags[tracking.MODEL_TAG] and version.tags["trial"] == "p"
    assert version.tags["sweep_run_id"] == ids["new"] and version.tags["trial_run_id"] == run.info.run_id
    assert (version.tags["accuracy"], version.tags["size_file_bytes"], version.tags["speedup"]) == ("0.8950", "1000000", "2.00")
    assert "under: fastest (paired speed-up)" in version.description and f"run {run.info.run_id}" in version.description
    described = client.get_registered_model("lpr_sweep")
    assert "Champion: version 1, trial p" in described.description and described.tags["champion_version"] == "1"
    assert mlflow.pyfunc.load_model("models:/lpr_sweep@champion").predict(np.zeros((1, 2))).shape == (1, 2)

    # a second report of the same sweep registers nothing new
    assert _report(cfg) == 0
    assert [str(v.version) for v in client.search_model_versions("name = 'lpr_sweep'")] == ["1"]
    assert "champion v1 holds (the champion's own trial won again)" in (tmp_path / "new" / "report.md").read_text()
    # another rule picks another trial of the same sweep: one version per sweep, unless forced
    assert _report(cfg, "--objective", "accuracy") == 1
    assert "nothing registered: this sweep already registered version 1 (trial p)" in capsys.readouterr().out
    assert client.get_model_version_by_alias("lpr_sweep", "champion").tags["trial"] == "p"
    assert _report(cfg, "--objective", "accuracy", "--promote") == 0
    assert client.get_model_version_by_alias("lpr_sweep", "champion").tags["trial"] == "base"
    # the runs table finds the decisions by tag: the champion tag moved with the alias, the sweep names its best
    exp = tracking.experiment_id(cfg)
    assert [r.info.run_name for r in client.search_runs([exp], "tags.`lpr_sweep.champion` = 'true'")] == ["base"]
    assert [r.info.run_name for r in client.search_runs([exp], f"tags.`lpr_sweep.best_of_sweep` = '{ids['new']}'")] == ["base"]
    assert client.get_run(ids["new"]).data.tags["lpr_sweep.best_trial"] == "base"


def _add_sweep(cfg, tmp_path, name, rows):
    """Another sweep in the same store: rows of (trial, validation accuracy, speed-up), each with a model."""
    client = MlflowClient()
    exp = tracking.experiment_id(cfg)
    (tmp_path / name).mkdir()
    parent = client.create_run(exp, run_name=name, tags={tracking.ROLE_TAG: "sweep", "sweep_dir": str(tmp_path / name)}).info.run_id
    for trial, acc, speed in rows:
        run = client.create_run(exp, run_name=trial, tags={"mlflow.parentRunId": parent, tracking.ROLE_TAG: "trial"}).info.run_id
        client.log_param(run, "optimization.name", "prune")
        for k, v in _t(trial, acc, speed).metrics.items():
            client.log_metric(run, k, v)
        with mlflow.start_run(run_id=run):
            info = mlflow.pyfunc.log_model(name="model", python_model=Echo())
        client.set_tag(run, tracking.MODEL_TAG, info.model_uri)
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent)
    return parent


@pytest.mark.slow
def test_the_gate_keeps_the_champion_against_worse_models_and_moves_it_for_a_better_one(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    client = MlflowClient()
    assert _report(cfg) == 0  # p, 2.0x at 0.895, becomes champion (version 1)
    _add_sweep(cfg, tmp_path, "worse", [("w1", 0.895, 1.3), ("w2", 0.85, 2.05)])  # w2 is outside the 1-pt rule
    assert _report(cfg) == 0
    text = (tmp_path / "worse" / "report.md").read_text()
    assert "kept champion v1 (the incumbent is faster beyond the margin: 2.00x against 1.30x)" in text
    assert "(champion v1)" in text  # the incumbent stood in the final
    assert client.get_model_version_by_alias("lpr_sweep", "champion").version == 1
    assert client.get_model_version_by_alias("lpr_sweep", "challenger").tags["trial"] == "w1"
    exp = tracking.experiment_id(cfg)
    assert [r.info.run_name for r in client.search_runs([exp], "tags.`lpr_sweep.champion` = 'true'")] == ["p"]
    assert [r.info.run_name for r in client.search_runs([exp], "tags.`lpr_sweep.challenger` = 'true'")] == ["w1"]
    assert "It held against version 2 (w1" in client.get_registered_model("lpr_sweep").description
    # tied on speed within the margin (2.06x against 2.00x) and no more accurate: the champion holds
    _add_sweep(cfg, tmp_path, "tied", [("t1", 0.895, 2.06)])
    assert _report(cfg) == 0 and client.get_model_version_by_alias("lpr_sweep", "champion").version == 1
    assert "kept champion v1 (the incumbent is tied on speed (2.06x against 2.00x, within the margin) and the challenger is no " \
           "better" in (tmp_path / "tied" / "report.md").read_text()
    # a better sweep moves it
    _add_sweep(cfg, tmp_path, "better", [("b1", 0.895, 3.0)])
    assert _report(cfg) == 0
    assert "is now 'champion' (the challenger is faster beyond the margin: 3.00x against 2.00x)" in (
        tmp_path / "better" / "report.md").read_text()
    assert client.get_model_version_by_alias("lpr_sweep", "champion").tags["trial"] == "b1"
    assert [r.info.run_name for r in client.search_runs([exp], "tags.`lpr_sweep.champion` = 'true'")] == ["b1"]


@pytest.mark.slow
def test_report_on_a_rule_nobody_meets_registers_nothing(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    assert _report(cfg, "--objective", "accuracy", "--min-speedup", "20") == 1
    out = capsys.readouterr().out
    assert "no trial satisfies the rule; closest is q" in out and "nothing registered" in out
    assert MlflowClient().search_registered_models() == []


@pytest.mark.slow
def test_report_refuses_empty_and_unknown_sweeps(mlstore, tmp_path, capsys):
    cfg, ids, _ = mlstore
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) == 1
    assert "no experiment 'lpr_sweep'" in capsys.readouterr().err
    assert report.main(["--tracking-uri", cfg.uri, "--sweep", "0123abc"]) == 1
    assert "no run '0123abc'" in capsys.readouterr().err
    client = MlflowClient()
    empty = client.create_run(tracking.experiment_id(cfg), run_name="e", tags={tracking.ROLE_TAG: "sweep"}).info.run_id
    assert report.main(["--tracking-uri", cfg.uri, "--sweep", empty]) == 1
    assert "has no trials" in capsys.readouterr().err
    # the latest sweep stopped before its first trial: `latest` skips it with a note and reports the one before
    assert _report(cfg, "--no-register") == 0
    out, err = capsys.readouterr()
    assert f"note: skipped 1 newer sweep(s) that hold no trial ({empty}); reporting {ids['new']}" in err
    assert f"# Sweep {ids['new']}" in out


@pytest.mark.slow
def test_a_sweep_that_is_not_over_is_reported_but_never_registered(mlstore, capsys, monkeypatch):
    cfg, ids, tmp_path = mlstore
    client = MlflowClient()
    client.update_run(ids["new"], status="RUNNING")  # killed: its process died before closing it
    assert _report(cfg) == 1
    text = (tmp_path / "new" / "report.md").read_text()
    assert f"**Unfinished**: sweep {ids['new']} stopped before its end (parent RUNNING" in text
    assert "finish it with the same command and resume=true" in capsys.readouterr().err
    assert client.search_model_versions("name = 'lpr_sweep'") == [] and "lpr_sweep.best_trial" not in client.get_run(ids["new"]).data.tags

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # where sweep locks live
    owner = subprocess.Popen([sys.executable, "-c", f"import time; from lpr_sweep.tracking import sweep; sweep.claim({ids['new']!r}); "
                              "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert owner.stdout.readline().strip() == "held"
        assert _report(cfg) == 1
        assert f"is still running (pid {owner.pid} on " in capsys.readouterr().err
    finally:
        owner.kill()
        owner.wait()
    assert client.search_model_versions("name = 'lpr_sweep'") == []


@pytest.mark.slow
def test_a_champion_whose_model_files_are_gone_is_not_registered(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    run = MlflowClient().search_runs([tracking.experiment_id(cfg)], "attributes.run_name = 'p'")[0]
    location = mlflow.get_logged_model(run.data.tags[tracking.MODEL_TAG].removeprefix("models:/")).artifact_location
    shutil.rmtree(urlparse(location).path)
    assert _report(cfg) == 1
    assert "cannot be read from its artifact store" in (tmp_path / "new" / "report.md").read_text()
    assert MlflowClient().search_model_versions("name = 'lpr_sweep'") == []


def test_a_report_folder_that_cannot_be_written_costs_nothing(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    (tmp_path / "afile").write_text("")
    assert _report(cfg, "--out", str(tmp_path / "afile" / "out")) == 1
    assert "cannot write the report into" in capsys.readouterr().err
    assert MlflowClient().search_model_versions("name = 'lpr_sweep'") == []


def test_a_corrupt_store_is_named_in_one_line(tmp_path, capsys):
    (tmp_path / "bad.db").write_text("not a database")
    assert report.main(["--tracking-uri", f"sqlite:///{tmp_path}/bad.db", "--no-final"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: MLflow store sqlite:///{tmp_path}/bad.db cannot be read (") and err.count("\n") == 1
