import random

import cv2
import numpy as np
import pytest
from mlflow import MlflowClient

from lpr_sweep import report, tracking
from lpr_sweep.report import Rule, Trial


def _t(name, acc, p50, size=1e6, status="FINISHED", **params):
    metrics = {"accuracy": acc, "latency_p50_ms": p50, "size_file_bytes": size}
    return Trial(name, name, status, metrics, {"quant.backend": "none", "prune.ratio": "0.5", **params})


BASE = _t("base", 0.90, 4.0, **{"prune.ratio": "0.0", "optimization.name": "baseline"})
TRIALS = [
    BASE,
    _t("a", 0.90, 5.0),
    _t("b", 0.89, 2.0),
    _t("c", 0.90, 3.0, size=3e6),
    _t("d", 0.95, 1.0, status="FAILED"),
    _t("e", 0.70, 0.5),
    _t("f", 0.885, 1.5, size=0.5e6),
]


def _brute_front(trials):
    done = [t for t in trials if t.finished]
    vec = {t.run_id: (-t.metrics["accuracy"], t.metrics["latency_p50_ms"], t.metrics["size_file_bytes"]) for t in done}

    def dominated(t):
        return any(all(x <= y for x, y in zip(vec[o.run_id], vec[t.run_id])) and vec[o.run_id] != vec[t.run_id] for o in done)

    return {t.run_id for t in done if not dominated(t)}


def test_pareto_matches_brute_force_on_random_runs_with_ties():
    rng = random.Random(0)
    for case in range(200):
        # few distinct values force ties in single objectives and whole duplicate points
        trials = [
            _t(f"{case}-{i}", rng.choice([0.8, 0.85, 0.9]), rng.choice([1.0, 2.0, 3.0]), rng.choice([1e6, 2e6]),
               status=rng.choice(["FINISHED"] * 5 + ["FAILED"]))
            for i in range(rng.randint(0, 15))
        ]
        assert {t.run_id for t in report.pareto(trials)} == _brute_front(trials)


def test_pareto_keeps_identical_points_and_drops_dominated_ones():
    twins = [_t("x", 0.9, 2.0), _t("y", 0.9, 2.0), _t("z", 0.9, 2.0, size=2e6), _t("w", 0.8, 1.0)]
    assert {t.name for t in report.pareto(twins)} == {"x", "y", "w"}


def test_highest_accuracy_within_latency_and_size():
    rule = Rule("accuracy")
    assert report.select(TRIALS, rule, BASE).name == "c"  # ties on accuracy: lower p50 (c before base and a)
    assert report.select(TRIALS, Rule("accuracy", max_latency_ms=3.5), BASE).name == "c"
    assert report.select(TRIALS, Rule("accuracy", max_latency_ms=3.5, max_size_bytes=2e6), BASE).name == "b"
    assert report.select(TRIALS, Rule("accuracy", max_latency_ms=0.1), BASE) is None


def test_lowest_latency_within_drop():
    assert report.select(TRIALS, Rule("latency", max_drop_pts=1.0), BASE).name == "b"  # exactly 1 pt lost
    assert report.select(TRIALS, Rule("latency", max_drop_pts=1.5), BASE).name == "f"
    assert report.select(TRIALS, Rule("latency", max_drop_pts=0.0), BASE).name == "c"
    assert report.select(TRIALS, Rule("latency"), BASE).name == "e"  # no limit: the fastest finished trial
    assert report.select(TRIALS, Rule("latency", max_drop_pts=1.0), None) is None  # no baseline: drop unknown


def test_failed_or_metricless_trials_never_win():
    assert report.select([_t("d", 0.99, 1.0, status="FAILED"), Trial("m", "m", "FINISHED", {})], Rule("accuracy")) is None


def test_unsatisfiable_rule_names_the_closest_run():
    rule = Rule("accuracy", max_latency_ms=1.0, max_drop_pts=1.0)  # e is fast enough but loses 20 pts
    champion, note = report.choose(report.Sweep("p", None, TRIALS, BASE), rule)
    assert champion is None
    assert "closest is f" in note and "latency_p50_ms over by 0.5, drop_pts over by 0.5" in note and "nothing registered" in note


def test_rules_state_themselves():
    assert str(Rule("accuracy", max_latency_ms=2, max_size_bytes=1e6)) == (
        "highest accuracy with latency_p50_ms <= 2 and size_file_bytes <= 1e+06 (ties: lower p50)")
    assert str(Rule("latency", max_drop_pts=1)) == "lowest p50 latency with drop <= 1 pts against the baseline (ties: higher accuracy)"
    with pytest.raises(ValueError, match="objective 'speed' is unknown"):
        Rule("speed")


def test_baseline_prefers_the_baseline_preset_on_onnxruntime():
    other = _t("ov", 0.9, 3.0, **{"prune.ratio": "0.0", "runtime.name": "openvino"})
    ort = _t("ort", 0.9, 3.0, **{"prune.ratio": "0.0", "runtime.name": "onnxruntime", "optimization.name": "baseline"})
    assert report.baseline_of([other, ort, TRIALS[1]]).name == "ort"
    assert report.baseline_of(TRIALS[1:]) is None


def test_markdown_shows_failed_runs_drop_speedup_and_published_numbers():
    failed = Trial("g", "g", "FAILED", {}, {}, "RuntimeError: boom")
    base = _t("base", 0.9, 4.0, **{"prune.ratio": "0.0", "optimization.name": "baseline"})
    pruned = _t("p", 0.8, 2.0, **{"optimization.name": "prune"})
    sweep = report.Sweep("parent", None, [base, pruned, failed], base)
    text = report.markdown(sweep, Rule("accuracy"), base, report.pareto(sweep.trials), "base")
    rows = {line.split(" | ")[1]: line for line in text.splitlines() if line.startswith("| ")}
    assert "FAILED: RuntimeError: boom" in rows["g"]
    assert "**champion**" in rows["base"] and "90.0 % · 250 ms · 1.11 MB" in rows["base"]
    assert "| 10.00 |" in rows["p"] and "| 2.00x |" in rows["p"] and "82.3 % · 143 ms · 0.71 MB" in rows["p"]
    assert "[1] accuracy · latency · size as published by the original course report" in text


def test_plot_is_a_decodable_png(tmp_path):
    sweep = report.Sweep("parent", None, TRIALS, BASE)
    path = report.plot(sweep, TRIALS[2], report.pareto(TRIALS), tmp_path / "r.png")
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 100 and image.std() > 0


@pytest.fixture
def mlstore(tmp_path):
    """Two sweeps in a private store: 'old' (one trial), 'new' (baseline, pruned, failed)."""
    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path}/r.db", artifact_root=str(tmp_path / "a"))
    exp = tracking.experiment_id(cfg)
    client = MlflowClient()
    ids = {}
    sweeps = {
        "old": [("x", 0.99, 1.0, "0.0", "FINISHED")],
        "new": [("base", 0.90, 4.0, "0.0", "FINISHED"), ("p", 0.895, 2.0, "0.5", "FINISHED"), ("q", 0.5, 0.5, "0.9", "FINISHED"),
                ("broken", None, None, "0.7", "FAILED")],
    }
    for sweep, rows in sweeps.items():
        folder = tmp_path / sweep
        folder.mkdir()
        parent = client.create_run(exp, run_name=sweep, tags={tracking.ROLE_TAG: "sweep", "sweep_dir": str(folder)}).info.run_id
        ids[sweep] = parent
        for name, acc, p50, ratio, status in rows:
            run = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent, tracking.ROLE_TAG: "trial"}).info.run_id
            for k, v in {"prune.ratio": ratio, "quant.backend": "none", "optimization.name": "baseline" if name == "base" else "prune",
                         "runtime.name": "onnxruntime", "protocol.n_scored": "900"}.items():
                client.log_param(run, k, v)
            if acc is not None:
                for k, v in {"accuracy": acc, "latency_p50_ms": p50, "latency_p90_ms": p50 * 1.1, "size_file_bytes": 1e6}.items():
                    client.log_metric(run, k, v)
            else:
                client.set_tag(run, "error", "ValueError: bad graph")
            client.set_terminated(run, status)
        client.set_terminated(parent)
    return cfg, ids, tmp_path


def test_report_writes_logs_and_registers_the_champion(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    assert report.main(["--tracking-uri", cfg.uri]) == 0  # default rule: lowest p50 within 1 pt
    text = (tmp_path / "new" / "report.md").read_text()
    assert "Champion: p (run" in text and "FAILED: ValueError: bad graph" in text
    assert (tmp_path / "new" / "report.png").stat().st_size > 0
    client = MlflowClient()
    logged = {a.path for a in client.list_artifacts(ids["new"])}
    assert {"report.md", "report.png"} <= logged
    version = client.get_model_version_by_alias("lpr_sweep", "champion")
    assert version.run_id == client.search_runs([tracking.experiment_id(cfg)], "attributes.run_name = 'p'")[0].info.run_id
    # a second report under another rule moves the alias
    assert report.main(["--tracking-uri", cfg.uri, "--objective", "accuracy"]) == 0
    assert client.get_model_version_by_alias("lpr_sweep", "champion").tags["trial"] == "base"


def test_report_on_a_rule_nobody_meets_registers_nothing(mlstore, capsys):
    cfg, ids, tmp_path = mlstore
    assert report.main(["--tracking-uri", cfg.uri, "--objective", "accuracy", "--max-latency-ms", "0.1"]) == 1
    out = capsys.readouterr().out
    assert "no trial satisfies the rule; closest is q" in out and "nothing registered" in out
    assert MlflowClient().search_registered_models() == []


def test_report_finds_a_baseline_outside_the_sweep(mlstore):
    cfg, ids, tmp_path = mlstore
    client = MlflowClient()
    exp = tracking.experiment_id(cfg)
    parent = client.create_run(exp, run_name="prune-only", tags={tracking.ROLE_TAG: "sweep"}).info.run_id
    run = client.create_run(exp, run_name="r", tags={"mlflow.parentRunId": parent, tracking.ROLE_TAG: "trial"}).info.run_id
    for k, v in {"prune.ratio": "0.5", "quant.backend": "none", "protocol.n_scored": "900"}.items():
        client.log_param(run, k, v)
    for k, v in {"accuracy": 0.88, "latency_p50_ms": 1.0, "size_file_bytes": 1e6}.items():
        client.log_metric(run, k, v)
    client.set_terminated(run)
    sweep = report.load(cfg, parent)
    assert sweep.baseline.name == "base" and "earlier run" in sweep.baseline_note
    assert report.drop_pts(sweep.trials[0], sweep.baseline) == pytest.approx(2.0)


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
