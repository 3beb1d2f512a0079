import pytest
from test_report import mlstore  # noqa: F401  (the same two-sweep store)

from lpr_sweep import best

pytestmark = pytest.mark.slow  # each test logs two MLflow models into a fresh store


def test_best_picks_from_the_latest_sweep_without_writing(mlstore, capsys):  # noqa: F811
    cfg, ids, tmp_path = mlstore
    assert best.main(["--tracking-uri", cfg.uri, "--objective", "accuracy"]) == 0
    assert "best: base " in capsys.readouterr().out
    assert best.main(["--tracking-uri", cfg.uri]) == 0  # default: fastest within 1 validation pt
    assert "best: p " in capsys.readouterr().out
    assert not (tmp_path / "new" / "report.md").exists()


def test_best_takes_a_named_sweep(mlstore, capsys):  # noqa: F811
    cfg, ids, _ = mlstore
    assert best.main(["--tracking-uri", cfg.uri, "--sweep", ids["old"], "--objective", "accuracy"]) == 0
    assert "best: x " in capsys.readouterr().out


def test_best_says_when_nothing_qualifies(mlstore, capsys):  # noqa: F811
    cfg, _, _ = mlstore
    assert best.main(["--tracking-uri", cfg.uri, "--min-speedup", "20"]) == 1
    assert "no trial satisfies the rule; closest is" in capsys.readouterr().err
