import mlflow
import pytest
from mlflow import MlflowClient

from lpr_sweep import ConfigError, tracking
from lpr_sweep.tracking import TrackingConfig, record


@pytest.fixture
def cfg(tmp_path):
    return TrackingConfig(uri=f"sqlite:///{tmp_path}/t.db", artifact_root=str(tmp_path / "art"), experiment="t")


def _only_run(cfg):
    exp = tracking.experiment_id(cfg)
    (run,) = MlflowClient().search_runs([exp])
    return run


def test_finished_trial_holds_params_and_tags(cfg):
    with record.trial(cfg, run_name="ok", params={"prune.ratio": 0.5}, parent_run_id=None, packages=("onnxruntime",)):
        mlflow.log_metric("accuracy", 0.9)
    run = _only_run(cfg)
    assert run.info.status == "FINISHED"
    assert run.data.params["prune.ratio"] == "0.5" and run.data.metrics["accuracy"] == 0.9
    for tag in ("git_commit", "version.torch", "version.onnxruntime", "version.mlflow", "hw.cpu", "hw.isa"):
        assert run.data.tags[tag], tag
    assert "version.apache-tvm" not in run.data.tags  # only the packages of the trial's own runtime and backend
    assert run.info.artifact_uri.startswith((cfg.artifact_root, "file://"))


def test_failed_trial_records_the_error_and_reraises(cfg):
    with pytest.raises(RuntimeError, match="boom"):
        with record.trial(cfg, run_name="bad", params={}, parent_run_id=None):
            raise RuntimeError("boom")
    run = _only_run(cfg)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom"
    assert "Traceback" in mlflow.artifacts.load_text(f"{run.info.artifact_uri}/error.txt")


def test_interrupted_trial_is_killed_not_left_running(cfg):
    with pytest.raises(KeyboardInterrupt):
        with record.trial(cfg, run_name="int", params={}, parent_run_id=None):
            raise KeyboardInterrupt
    assert _only_run(cfg).info.status == "KILLED"


def test_child_points_at_its_parent(cfg):
    exp = tracking.experiment_id(cfg)
    parent = MlflowClient().create_run(exp).info.run_id
    with record.trial(cfg, run_name="child", params={}, parent_run_id=parent):
        pass
    (child,) = MlflowClient().search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert child.data.tags[tracking.ROLE_TAG] == "trial"


def test_relative_sqlite_path_is_pinned_to_the_launch_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri(TrackingConfig(uri="sqlite:///x.db")) == f"sqlite:///{tmp_path}/x.db?timeout=60"
    assert tracking.tracking_uri(TrackingConfig(uri="sqlite:////abs/x.db?timeout=5")) == "sqlite:////abs/x.db?timeout=5"
    assert tracking.tracking_uri(TrackingConfig(uri="http://127.0.0.1:5000")) == "http://127.0.0.1:5000"


def test_flatten_nested_config():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {"a.b": "1", "a.c.d": "None", "e": "[1, 2]"}


def test_config_hash_ignores_where_results_and_data_live():
    a = {"prune": {"ratio": 0.5}, "data": {"root": "/a", "seed": 0}, "tracking": {"uri": "x"}, "resume": False, "cache": {"dir": "a"}}
    b = {"prune": {"ratio": 0.5}, "data": {"root": "/b", "seed": 0}, "tracking": {"uri": "y"}, "resume": True, "cache": {"dir": "b"}}
    assert tracking.config_hash(a) == tracking.config_hash(b)
    assert tracking.config_hash(a) != tracking.config_hash({**a, "prune": {"ratio": 0.6}})
    assert tracking.config_hash(a) != tracking.config_hash({**a, "data": {"root": "/a", "seed": 1}})


def test_unreachable_server_fails_fast_with_the_fix(monkeypatch):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    # the fix starts a server where the URI points, not on a default port
    with pytest.raises(ConfigError, match=f"MLflow tracking server http://127.0.0.1:{port} is unreachable .*start it "
                                          f"\\(mlflow server --host 127.0.0.1 --port {port} "):
        tracking.experiment_id(TrackingConfig(uri=f"http://127.0.0.1:{port}", artifact_root="", request_timeout_s=2))
    assert time.perf_counter() - t0 < 5


def test_a_deleted_experiment_is_named_with_the_fix(cfg):
    exp = tracking.experiment_id(cfg)
    MlflowClient().delete_experiment(exp)
    with pytest.raises(ConfigError, match=f"experiment 't' in .* is deleted; restore it \\(mlflow experiments restore "
                                          f"--experiment-id {exp}\\) or record elsewhere with tracking.experiment="):
        tracking.experiment_id(cfg)


def test_latest_per_config_keeps_the_finished_rerun():
    from types import SimpleNamespace as NS

    def run(rid, status, start, h):
        return NS(info=NS(run_id=rid, status=status, start_time=start), data=NS(tags={tracking.HASH_TAG: h}))

    runs = [run("old", "KILLED", 1, "a"), run("new", "FINISHED", 2, "a"), run("b", "FAILED", 1, "b"), run("c", "FINISHED", 3, "")]
    assert sorted(r.info.run_id for r in tracking.latest_per_config(runs)) == ["b", "c", "new"]


class _Plates(list):
    @property
    def files(self):
        return list(self)


def test_a_dataset_logged_at_once_by_a_parallel_trial_still_reaches_this_run(cfg, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    real, calls = mlflow.log_input, []

    def racing(dataset, context=None):  # the other trial inserted the same dataset row first
        calls.append(context)
        if len(calls) == 1:
            real(dataset, context=context)  # the row exists now, as it would after the other trial's insert
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name")
        return real(dataset, context=context)

    monkeypatch.setattr(mlflow, "log_input", racing)
    with record.trial(cfg, run_name="ok", params={}, parent_run_id=None, packages=()):
        record.log_plates(tmp_path, {"scored": _Plates(["a.jpg", "b.jpg"])})
    run = _only_run(cfg)
    assert calls == ["scored", "scored"] and run.info.status == "FINISHED"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["lprnet-scored (2 plates, split seed 0)"]
