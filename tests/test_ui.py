"""The MLflow UI in a real headless browser (Debian's Chromium, driven by Playwright), on a tiny sweep
served from 127.0.0.1: the runs table with short trial names, the champion's run page with its
headline metrics first, and the registered model with its description and alias.

Screenshots go to $LPR_UI_SCREENSHOTS when it is set (else the test's tmp folder)."""
import os
import re
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import TINY, cli
from lpr_sweep import report, tracking

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: `make test` installs Debian's chromium (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def _text(page, wait_for: str, timeout_ms: int = 60_000) -> str:
    """The page's visible text once ``wait_for`` shows (the UI renders after its API calls return)."""
    page.get_by_text(re.compile(wait_for)).first.wait_for(timeout=timeout_ms)
    return page.inner_text("body")


def test_the_ui_opens_on_short_names_headline_metrics_and_the_described_champion(tmp_path, tiny_root, server, browser):
    shots = Path(os.environ.get("LPR_UI_SCREENSHOTS", tmp_path / "shots"))
    shots.mkdir(parents=True, exist_ok=True)
    done = cli("-m", "tracking=server", f"tracking.uri={server}", f"data.root={tiny_root}", *TINY, f"cache.dir={tmp_path}/cache",
               f"hydra.sweep.dir={tmp_path}/sweep", "prune.ratio=0.1,0.3", "prune.scope=layer,global", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert report.main(["--tracking-uri", server, "--no-final", "--objective", "accuracy"]) == 0
    client = MlflowClient(server)
    champion = client.get_model_version_by_alias("lpr_sweep", "champion")
    run = client.get_run(champion.tags["trial_run_id"])

    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    # what `make ui` prints: the runs table in Model training mode, trials only, fastest first
    page.goto(tracking.ui_url(tracking.TrackingConfig(uri=server), port=int(server.rsplit(":", 1)[1])))
    text = _text(page, r"^0\.1 layer$")
    page.screenshot(path=str(shots / "runs_table.png"), full_page=True)
    fastest = [r.info.run_name for r in client.search_runs([run.info.experiment_id], "tags.`lpr_sweep.role` = 'trial'",
                                                           order_by=["metrics.speedup DESC"])]
    shown = [line for line in text.split("\n") if line in fastest]
    assert shown == fastest and len(fastest) == 4, text[:2000]
    assert "Sort: speedup" in text and "4 matching runs" in text
    assert "Model registry" in text and "Sessions" not in text  # Model training mode, not the GenAI overview

    page.goto(f"{server}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    text = _text(page, r"speedup_ci_low")
    page.screenshot(path=str(shots / "champion_run.png"), full_page=True)
    assert run.info.run_name in text and "lpr_sweep.champion" in text
    # the metrics a user decides on come before the model's bookkeeping
    assert text.index("speedup") < text.index("sparsity") and text.index("val_accuracy") < text.index("params_dense")
    assert "host_loadavg_1m" in text and "protocol.loadavg_1m" not in text  # a machine reading is a metric

    page.goto(f"{server}/#/models/lpr_sweep")
    text = _text(page, r"Champion: version 1")
    page.screenshot(path=str(shots / "registered_model.png"), full_page=True)
    assert "@champion" in text.replace(" ", "") or "champion" in text
    assert f"trial {run.info.run_name}" in text and "champion_version" in text
