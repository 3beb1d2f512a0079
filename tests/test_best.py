
import pytest
from mlflow import MlflowClient

from lpr_sweep import best, tracking
from lpr_sweep.best import Rule, Trial


def _t(name, acc, p50, size=1e6, status="FINISHED"):
    return Trial(name, name, status, {"accuracy": acc, "latency_p50_ms": p50, "size_file_bytes": size})


TRIALS = [_t("a", 0.90, 5.0), _t("b", 0.89, 2.0), _t("c", 0.90, 3.0, size=3e6), _t("d", 0.95, 1.0, status="FAILED"), _t("e", 0.70, 0.5)]


def test_highest_accuracy_ties_go_to_lower_latency():
    assert best.select(TRIALS, Rule()).name == "c"


def test_latency_and_size_limits():
    assert best.select(TRIALS, Rule(max_latency_ms=4.0)).name == "c"
    assert best.select(TRIALS, Rule(max_latency_ms=4.0, max_size_bytes=2e6)).name == "b"
    assert best.select(TRIALS, Rule(max_latency_ms=0.1)) is None


def test_failed_or_metricless_trials_never_win():
    assert best.select([_t("d", 0.99, 1.0, status="FAILED"), Trial("m", "m", "FINISHED", {})], Rule()) is None


def test_rule_states_itself():
    assert str(Rule(max_latency_ms=2)) == "highest accuracy with latency_p50_ms <= 2 (ties: lower p50)"
    assert str(Rule()) == "highest accuracy (ties: lower p50)"


@pytest.fixture
def store(tmp_path):
    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path}/b.db", artifact_root=str(tmp_path / "a"))
    exp = tracking.experiment_id(cfg)
    client = MlflowClient()
    ids = {}
    for sweep, rows in {"old": [("x", 0.99, 1.0)], "new": [("p", 0.8, 2.0), ("q", 0.85, 9.0)]}.items():
        parent = client.create_run(exp, run_name=sweep, tags={tracking.ROLE_TAG: "sweep"}).info.run_id
        ids[sweep] = parent
        for name, acc, p50 in rows:
            run = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent})
            client.log_metric(run.info.run_id, "accuracy", acc)
            client.log_metric(run.info.run_id, "latency_p50_ms", p50)
            client.set_terminated(run.info.run_id)
        client.set_terminated(parent)
    return cfg, ids


def test_cli_picks_from_the_latest_sweep(store, capsys):
    cfg, _ = store
    assert best.main(["--tracking-uri", cfg.uri]) == 0
    assert "best: q " in capsys.readouterr().out
    assert best.main(["--tracking-uri", cfg.uri, "--max-latency-ms", "5"]) == 0
    assert "best: p " in capsys.readouterr().out


def test_cli_takes_a_named_sweep(store, capsys):
    cfg, ids = store
    assert best.main(["--tracking-uri", cfg.uri, "--sweep", ids["old"]]) == 0
    assert "best: x " in capsys.readouterr().out


def test_cli_says_when_nothing_qualifies_or_nothing_exists(store, tmp_path, capsys):
    cfg, _ = store
    assert best.main(["--tracking-uri", cfg.uri, "--max-latency-ms", "0.5"]) == 1
    assert "no trial satisfies the rule" in capsys.readouterr().err
    assert best.main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db"]) == 1
    assert "no experiment 'lpr_sweep'" in capsys.readouterr().err
