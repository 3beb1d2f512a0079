"""The list sweeper behind +experiment=published_table and the Optuna search sweeper, on tiny data."""

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import REPO, TINY, cli, sweep_runs
from hydra_plugins.lpr_sweep_sweeper import sweeper
from lpr_sweep import config, report



def test_expand_appends_each_jobs_sweeps_to_the_command_line():
    jobs = [["c=1"], ["c=2", "d=4,5"]]
    assert config.expand(["a=1", "b=2,3"], jobs) == [
        ["a=1", "b=2", "c=1"], ["a=1", "b=3", "c=1"],
        ["a=1", "b=2", "c=2", "d=4"], ["a=1", "b=2", "c=2", "d=5"], ["a=1", "b=3", "c=2", "d=4"], ["a=1", "b=3", "c=2", "d=5"],
    ]
    assert config.expand(["a=1,2"], []) == [["a=1"], ["a=2"]]


def test_run_names_are_the_values_that_vary_and_survive_hydras_grammar():
    jobs = config.named([["a=1", "p=0.1", "s=layer"], ["a=1", "p=0.9", "s=global"], ["a=1", "w='x y,z'"]])
    assert [job[-1] for job in jobs] == ["tracking.run_name='0.1 layer'", "tracking.run_name='0.9 global'",
                                         "tracking.run_name='x y,z'"]
    parsed = OverridesParser.create().parse_overrides([jobs[2][-1]])[0]
    assert parsed.value() == "x y,z" and not parsed.is_sweep_override()
    assert config.named([["a=1"]]) == [["a=1"]]  # nothing varies: no name; the run falls back to its overrides


def test_published_table_is_the_six_rows_plus_the_pruning_sweep_and_every_job_validates():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=published_table"], return_hydra_config=True)
        assert cfg.hydra.mode.name == "MULTIRUN"
        jobs = config.expand(["+experiment=published_table"], cfg.hydra.sweeper.jobs)
        names = set()
        for job in jobs:
            c = config.validate(compose("config", overrides=job))
            names.add((c.optimization.name, c.prune.scope.value, c.prune.ratio, c.quant.backend, c.runtime.name))
    assert len(jobs) == len(names) == 1 + 2 + 1 + 2 + 1 + 2 + 5 + 16
    for row in [("baseline", "global", 0.0, "none", "onnxruntime"), ("prune", "layer", 0.5, "none", "onnxruntime"),
                ("mlc", "global", 0.0, "none", "tvm"), ("prune_mlc", "layer", 0.5, "none", "tvm"),
                ("quant", "global", 0.0, "nncf", "openvino"), ("prune_quant", "global", 0.5, "nncf", "openvino"),
                ("prune", "layer", 0.9, "none", "onnxruntime"), ("prune", "global", 0.1, "none", "onnxruntime"),
                ("prune_structured_kd", "global", 0.9, "none", "onnxruntime"), ("prune_structured_mlc", "global", 0.8, "none", "tvm"),
                ("prune_structured_kd_quant", "global", 0.9, "nncf", "openvino")]:
        assert row in names
    published = {(n, r) for n, _, r, _, _ in names} & set(report.PUBLISHED)
    assert published == set(report.PUBLISHED)  # every published row has a counterpart


def test_stage_search_without_the_search_sweeper_fails_in_one_line_before_any_record(tmp_path, tiny_root, store):
    done = _run(tmp_path, tiny_root, store, "+experiment=stage_search")
    assert done.returncode != 0 and "add hydra/sweeper=search to the command line" in done.stderr.strip().splitlines()[-1]
    assert not sweep_runs(store)[1]  # no parent run left behind


def test_stage_search_searches_the_stage_ratios_only_and_every_sample_validates():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=stage_search", "hydra/sweeper=search"], return_hydra_config=True)
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        alone = compose("config", overrides=["+experiment=stage_search"], return_hydra_config=True)
        with pytest.raises(ValueError, match=r"hydra.sweeper.n_trials, params belong to the search sweeper; add hydra/sweeper=search"):
            sweeper.ListSweeper(**{k: v for k, v in alone.hydra.sweeper.items() if k != "_target_"})
        sweep = sweeper.OptunaSweeper(cfg.hydra.sweeper.params, ["val_accuracy", "speedup"], ["maximize", "maximize"], 1)
        assert set(sweep.params) == {f"prune.stages.{s}" for s in ("block1", "block2", "block3", "head", "classifier")}
        c = config.validate(compose("config", overrides=["+experiment=stage_search", "prune.stages.block3=0.95", "prune.stages.head=0.7"]))
    assert c.optimization.name == "prune_structured_kd_quant" and c.finetune.enabled and c.prune.ratio == 0.9
    assert c.prune.stages.set() == {"block3": 0.95, "head": 0.7}


@pytest.mark.parametrize("text, kind", [
    ("x=choice(a,b)", optuna.distributions.CategoricalDistribution),
    ("x=range(1,4)", optuna.distributions.CategoricalDistribution),
    ("x=interval(0.0,0.9)", optuna.distributions.FloatDistribution),
    ("x=interval(1,8)", optuna.distributions.FloatDistribution),
    ("x=tag(log,interval(0.001,1.0))", optuna.distributions.FloatDistribution),
])
def test_search_dimensions_from_hydra_grammar(text, kind):
    (override,) = OverridesParser.create().parse_overrides([text])
    dist = sweeper.distribution(override)
    assert isinstance(dist, kind)
    assert getattr(dist, "log", False) == ("log" in text)


def test_search_dimension_must_sweep():
    (override,) = OverridesParser.create().parse_overrides(["x=glob(*)"])
    with pytest.raises(ValueError, match="must be choice"):
        sweeper.distribution(override)


def _children(store):
    cfg, (parent,), children = sweep_runs(store)
    return cfg, parent, children


def _run(tmp_path, tiny_root, store, *args):
    return cli(*args, f"data.root={tiny_root}", *TINY, *store, f"hydra.sweep.dir={tmp_path}/sweep")


@pytest.mark.slow
def test_list_sweep_runs_its_jobs_and_reports(tmp_path, tiny_root, store):
    done = _run(tmp_path, tiny_root, store, "-m", "hydra/sweeper=list",
                "hydra.sweeper.jobs=[['optimization=baseline'],['optimization=prune','prune.scope=layer,global']]")
    assert done.returncode == 0, done.stderr[-3000:]
    cfg, parent, children = _children(store)
    rows = sorted((r.data.params["optimization.name"], r.data.params["prune.scope"], r.data.params["prune.ratio"]) for r in children)
    assert rows == [("baseline", "global", "0.0"), ("prune", "global", "0.5"), ("prune", "layer", "0.5")]
    # short names: the values of the keys that vary, in a column's width; the full overrides in a tag
    assert sorted(r.info.run_name for r in children) == ["baseline", "prune global", "prune layer"]
    assert all("data.calib_size=2" in r.data.tags["lpr_sweep.overrides"] for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert report.main(["--tracking-uri", cfg.uri, "--objective", "accuracy", "--no-register"]) == 0
    assert "Champion: " in (tmp_path / "sweep" / "report.md").read_text()


def test_list_sweep_refuses_a_bad_job_before_running_any(tmp_path, tiny_root, store):
    done = _run(tmp_path, tiny_root, store, "-m", "hydra/sweeper=list", "hydra.sweeper.jobs=[['prune.ratio=0.1'],['prune.ratio=1.5']]")
    assert done.returncode != 0 and "prune.ratio=1.5 is outside [0, 1)" in done.stderr
    assert not (tmp_path / "sweep" / "0").exists()


@pytest.mark.slow
def test_search_sweep_runs_its_budget_of_valid_trials(tmp_path, tiny_root, store):
    done = _run(
        tmp_path, tiny_root, store, "-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=4",
        "~hydra.sweeper.params",
        "+hydra.sweeper.params={prune.ratio:'interval(0.0,0.9)',quant:'choice(none,nncf)',prune.scope:'choice(global,layer)'}",
        "runtime=choice(onnxruntime,openvino)",  # a search dimension given on the command line
        "prune.scope=layer",  # a fixed value takes its key out of the search
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, parent, children = _children(store)
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    command = parent.data.tags["mlflow.note.content"]  # the parent's description reproduces the sweep, search settings included
    assert "hydra/sweeper=search hydra.sweeper.n_trials=4" in command and "hydra.mode" not in command
    for r in children:
        assert 0.0 <= float(r.data.params["prune.ratio"]) <= 0.9 and r.data.params["prune.scope"] == "layer"
        assert r.data.params["quant.backend"] == "none" or r.data.params["runtime.name"] == "openvino"
        assert f"ratio={float(r.data.params['prune.ratio']):.3g}" in r.info.run_name.split()  # the sampled values, short
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["objectives"] == ["val_accuracy", "speedup"] and results["pareto_front"]
    assert all(len(t["values"]) == 2 for t in results["pareto_front"])


def test_greedy_prunes_more_of_what_a_stage_keeps_and_picks_like_netadapt():
    assert sweeper.prune_more(0.9, 0.2) == 0.92 and sweeper.prune_more(0.3, 0.5) == 0.65 and sweeper.prune_more(0.985, 0.5) == 0.99
    assert sweeper.shares({"profile_us_block1": 30.0, "profile_us_block3": 10.0, "speedup": 2.0}, ["block1", "block3", "head"]) == {
        "block1": 0.75, "block3": 0.25, "head": 0.0}
    assert sweeper.shares({"speedup": 2.0}, ["block1"]) == {}  # no profile by stage: every stage is proposed
    def m(acc, low, mid, high, drop_high=1.0):
        return {"val_accuracy": acc, "speedup_ci_low": low, "speedup": mid, "speedup_ci_high": high, "run_name": "x",
                "val_drop_pts": 100 * (0.9 - acc), "val_drop_pts_ci_high": drop_high, "size_file_bytes": 1000}

    current = m(0.90, 3.9, 4.0, 4.1)
    proposals = {"a": m(0.905, 3.8, 3.9, 4.0),    # more accurate, but not faster: never picked
                 "b": m(0.895, 4.4, 4.5, 4.6),
                 "c": m(0.898, 4.3, 4.4, 4.5),    # the most accurate of the faster ones, by the same pessimistic drop
                 "d": m(0.80, 5.9, 6.0, 6.1),     # fastest, below the floor
                 "f": m(0.91, 4.05, 4.15, 4.25),  # faster by 3.75 %: within the practical margin, so not faster
                 "g": m(0.91, 4.0, 4.3, 4.6),     # 7.5 % faster, but its interval overlaps: noise
                 "e": None}                       # a failed trial
    assert sweeper.choose(current, proposals, floor=0.895) == "c"
    assert sweeper.choose(current, {k: proposals[k] for k in "adefg"}, floor=0.895) is None
    # One plate up on validation does not decide: c scored higher, but b's drop interval ends lower.
    steadier = {**proposals, "b": m(0.895, 4.4, 4.5, 4.6, drop_high=0.5), "c": m(0.898, 4.3, 4.4, 4.5, drop_high=2.0)}
    assert sweeper.choose(current, steadier, floor=0.895) == "b"


def test_netadapt_composes_the_greedy_sweeper_and_refuses_the_list_sweeper_in_one_line():
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["+experiment=netadapt", "hydra/sweeper=greedy"], return_hydra_config=True)
        alone = compose("config", overrides=["+experiment=netadapt"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("GreedySweeper") and cfg.optimization.name == "prune_structured_kd_quant"
    greedy = sweeper.GreedySweeper(**{k: v for k, v in cfg.hydra.sweeper.items() if k != "_target_"})
    assert set(greedy.start) == {"block1", "block2", "block3", "head", "classifier"} and greedy.iterations == 3
    with pytest.raises(ValueError, match=r"hydra.sweeper.iterations belong to the greedy sweeper; add hydra/sweeper=greedy"):
        sweeper.ListSweeper(**{k: v for k, v in alone.hydra.sweeper.items() if k != "_target_"})
    with pytest.raises(ValueError, match=r"names \['blok3'\], not stages of LPRNet"):
        sweeper.GreedySweeper(start={"blok3": 0.5})
    with pytest.raises(ValueError, match=r"^hydra.sweeper.start gives \{'block3': 1.2\}; every stage's ratio must be in \[0, 1\)$"):
        sweeper.GreedySweeper(start={"block1": 0.3, "block3": 1.2})
    with pytest.raises(ValueError, match=r"^hydra.sweeper.step=1.5 must be in \(0, 1\)$"):
        sweeper.GreedySweeper(start={"block3": 0.9}, step=1.5)


@pytest.mark.slow
def test_greedy_sweep_starts_proposes_and_keeps_its_pick(tmp_path, tiny_root, store):
    done = _run(tmp_path, tiny_root, store, "-m", "hydra/sweeper=greedy", "runtime=openvino", "prune.structured=true",
                "~hydra.sweeper.start", "+hydra.sweeper.start={block3: 0.5, head: 0.5}", "hydra.sweeper.iterations=1", "hydra.sweeper.step=0.5",
                "hydra.sweeper.max_drop_pts=100", "hydra.sweeper.min_share=0.0")
    assert done.returncode == 0, done.stderr[-3000:]
    _, parent, children = _children(store)
    assert sorted(r.info.run_name for r in children) == ["greedy 0 start", "greedy 1 block3=0.75", "greedy 1 head=0.75"]
    by_name = {r.info.run_name: r for r in children}
    assert by_name["greedy 1 block3=0.75"].data.params["prune.stages.block3"] == "0.75"
    assert by_name["greedy 1 block3=0.75"].data.params["prune.stages.head"] == "0.5"
    start = by_name["greedy 0 start"].data.metrics
    assert {"profile_us_block3", "profile_us_head", "profile_us_block1"} <= set(start)  # OpenVINO's profile, by stage
    results = yaml.safe_load((tmp_path / "sweep" / "greedy_results.yaml").read_text())
    (it,) = results["iterations"]
    assert set(it["proposals"]) == {"block3=0.75", "head=0.75"} and results["start"] == {"block3": 0.5, "head": 0.5}
    assert it["timing"].startswith("side by side")  # the candidates re-timed together, each trial's own speed-up kept beside
    assert all(m["trial_speedup"] == pytest.approx(by_name[f"greedy 1 {p}"].data.metrics["speedup"], abs=1e-4)  # MLflow: 4 decimals
               and m["trial_noisy"] == bool(by_name[f"greedy 1 {p}"].data.metrics.get("bench_noisy", 0)) for p, m in it["proposals"].items())
    cur = it["current_speedup"]  # {x: point, ci95: [low, high]} from the side-by-side timing; the floor is off (100 pts)
    if it["picked"] is not None:  # picked only when faster as selection.faster judges (tested on its own): at least these hold
        m = it["proposals"][it["picked"]]
        assert not m["noisy"] and not it["current_noisy"] and m["speedup"]["ci95"][0] > cur["ci95"][1] and m["speedup"]["x"] > cur["x"] * 1.05
    assert results["final"] == ({"block3": 0.5, "head": 0.5} if it["picked"] is None else {**results["start"], it["picked"].split("=")[0]: 0.75})


def test_a_bad_greedy_setting_fails_in_one_line_before_any_record(tmp_path, tiny_root, store):
    done = _run(tmp_path, tiny_root, store, "+experiment=netadapt", "hydra/sweeper=greedy", "+hydra.sweeper.start.blok3=0.5")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == ("error: hydra.sweeper.start names ['blok3'], not stages of LPRNet; "
                                                    "use stem, block1, block2, block3, head, classifier, container")
    assert not sweep_runs(store)[1]  # no parent run left behind
