import mlflow
import pytest
from mlflow import MlflowClient

from lpr_sweep import tracking
from lpr_sweep.tracking import TrackingConfig


@pytest.fixture
def cfg(tmp_path):
    return TrackingConfig(uri=f"sqlite:///{tmp_path}/t.db", artifact_root=str(tmp_path / "art"), experiment="t")


def _only_run(cfg):
    exp = tracking.experiment_id(cfg)
    (run,) = MlflowClient().search_runs([exp])
    return run


def test_finished_trial_holds_params_and_tags(cfg):
    with tracking.trial(cfg, run_name="ok", params={"prune.ratio": 0.5}, parent_run_id=None):
        mlflow.log_metric("accuracy", 0.9)
    run = _only_run(cfg)
    assert run.info.status == "FINISHED"
    assert run.data.params["prune.ratio"] == "0.5" and run.data.metrics["accuracy"] == 0.9
    for tag in ("git_commit", "version.torch", "version.onnxruntime", "version.apache-tvm", "version.mlflow", "hw.cpu", "hw.isa"):
        assert run.data.tags[tag], tag
    assert run.info.artifact_uri.startswith((cfg.artifact_root, "file://"))


def test_failed_trial_records_the_error_and_reraises(cfg):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.trial(cfg, run_name="bad", params={}, parent_run_id=None):
            raise RuntimeError("boom")
    run = _only_run(cfg)
    assert run.info.status == "FAILED"
    assert run.data.tags["error"] == "RuntimeError: boom"
    assert "Traceback" in mlflow.artifacts.load_text(f"{run.info.artifact_uri}/error.txt")


def test_interrupted_trial_is_killed_not_left_running(cfg):
    with pytest.raises(KeyboardInterrupt):
        with tracking.trial(cfg, run_name="int", params={}, parent_run_id=None):
            raise KeyboardInterrupt
    assert _only_run(cfg).info.status == "KILLED"


def test_child_points_at_its_parent(cfg):
    exp = tracking.experiment_id(cfg)
    parent = MlflowClient().create_run(exp).info.run_id
    with tracking.trial(cfg, run_name="child", params={}, parent_run_id=parent):
        pass
    (child,) = MlflowClient().search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")
    assert child.data.tags[tracking.ROLE_TAG] == "trial"


def test_relative_sqlite_path_is_pinned_to_the_launch_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri(TrackingConfig(uri="sqlite:///x.db")) == f"sqlite:///{tmp_path}/x.db"
    assert tracking.tracking_uri(TrackingConfig(uri="http://127.0.0.1:5000")) == "http://127.0.0.1:5000"


def test_flatten_nested_config():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1, 2]}) == {"a.b": "1", "a.c.d": "None", "e": "[1, 2]"}
