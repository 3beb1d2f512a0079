import cv2
import numpy as np
import pytest
import mlflow
from mlflow import MlflowClient

from lpr_sweep import report, tracking
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
    sweep = report.Sweep("parent", None, [BASE, pruned, failed, busy])
    text = report.markdown(sweep, Rule("accuracy"), BASE, report.pareto(sweep.trials), "base")
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
    text = report.markdown(sweep, Rule("accuracy"), BASE, report.pareto(sweep.trials), "base")
    assert "ranged 4.00-5.00 ms over the trials (25 % apart)" in text and "clears the other's by 15 %" in text
    assert "none did here" not in text


def test_plot_is_a_decodable_png(tmp_path):
    sweep = report.Sweep("parent", None, TRIALS)
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
            else:
                client.set_tag(run, "error", "ValueError: bad graph")
            client.set_terminated(run, status)
        client.set_terminated(parent)
    return cfg, ids, tmp_path


@pytest.mark.slow
def test_report_writes_logs_and_registers_the_champion(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    assert report.main(["--tracking-uri", cfg.uri]) == 0  # default rule: fastest within 1 validation pt
    text = (tmp_path / "new" / "report.md").read_text()
    assert "Champion: p (run" in text and "FAILED: ValueError: bad graph" in text
    assert (tmp_path / "new" / "report.png").stat().st_size > 0
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(ids["new"])}
    assert {"report.md", "report.png"} <= logged
    version = client.get_model_version_by_alias("lpr_sweep", "champion")
    run = client.search_runs([tracking.experiment_id(cfg)], "attributes.run_name = 'p'")[0]
    assert version.source == run.data.tags[tracking.MODEL_TAG] and version.tags["trial"] == "p"
    assert (version.tags["accuracy"], version.tags["size_file_bytes"], version.tags["speedup"]) == ("0.8950", "1000000", "2.00")
    assert "Champion under: fastest (paired speed-up)" in version.description and f"run {run.info.run_id}" in version.description
    assert mlflow.pyfunc.load_model("models:/lpr_sweep@champion").predict(np.zeros((1, 2))).shape == (1, 2)
    # a second report under another rule moves the alias
    assert report.main(["--tracking-uri", cfg.uri, "--objective", "accuracy"]) == 0
    assert client.get_model_version_by_alias("lpr_sweep", "champion").tags["trial"] == "base"


@pytest.mark.slow
def test_report_on_a_rule_nobody_meets_registers_nothing(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    assert report.main(["--tracking-uri", cfg.uri, "--objective", "accuracy", "--min-speedup", "20"]) == 1
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
