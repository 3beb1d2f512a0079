import subprocess
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from conftest import REPO, cli, compose_cfg
from lpr_sweep import ConfigError, config, quant

GROUPS = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir())


@pytest.mark.parametrize(
    "group,option",
    [(g, f.stem) for g in GROUPS for f in sorted((REPO / "conf" / g).glob("*.yaml"))],
)
def test_every_shipped_yaml_composes_and_validates(group, option):
    prefix = "+" if group == "experiment" else ""
    overrides = [f"{prefix}{group}={option}"]
    if group == "quant" and option != "none":
        overrides.append(f"runtime={quant.backend_of(quant.QuantConfig(backend=option)).runtimes[0]}")  # the runtime it needs
    conf = config.validate(compose_cfg(overrides))
    assert isinstance(conf, config.Config)


def test_help_is_the_projects_own():
    done = cli("--help")
    assert done.returncode == 0
    for line in ("python -m lpr_sweep -m KEY=A,B", "resume=true", "python -m lpr_sweep -m prune.ratio=0.1,0.5,0.9",
                 "optimization: baseline, mlc, prune,", "multirun/", "data.root=PATH"):
        assert line in done.stdout, line


def test_every_yaml_has_a_comment_line():
    for path in (REPO / "conf").rglob("*.yaml"):
        assert path.read_text(encoding="utf-8").lstrip().startswith("#"), path


def test_prune_preset_reaches_the_pruning_stage():
    conf = config.validate(compose_cfg(["optimization=prune"]))
    assert (conf.prune.ratio, conf.prune.scope.name) == (0.5, "global")
    # and a command-line value still wins over the preset
    assert config.validate(compose_cfg(["optimization=prune", "prune.ratio=0.7"])).prune.ratio == 0.7


def test_ratio_out_of_range_is_refused():
    with pytest.raises(ConfigError, match=r"prune.ratio=1.5 is outside \[0, 1\)"):
        config.validate(compose_cfg(["prune.ratio=1.5"]))


def test_ratio_not_a_number_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ValidationError), match="abc"):
        compose_cfg(["prune.ratio=abc"])


def test_unknown_scope_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ValidationError), match="diagonal"):
        compose_cfg(["prune.scope=diagonal"])


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    store = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns"]
    return cli(*args, *store, f"hydra.sweep.dir={tmp_path}/multirun", timeout=300)


def test_cli_refuses_bad_ratio_with_one_line(tmp_path):
    done = _cli(tmp_path, "prune.ratio=1.5")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: prune.ratio=1.5 is outside [0, 1); use e.g. prune.ratio=0.5"]
    assert "Traceback" not in done.stderr


def test_multirun_validates_every_job_before_the_first(tmp_path):
    done = _cli(tmp_path, "-m", "prune.ratio=0.1,1.5")
    assert done.returncode != 0
    assert "prune.ratio=1.5 is outside [0, 1)" in done.stderr
    # nothing ran: no trial was exported, no run was recorded
    assert not list(tmp_path.rglob("model.onnx"))
    assert "] stage " not in done.stdout + done.stderr  # no trial reached its first stage
    assert not (tmp_path / "mlflow.db").exists()


def test_cli_refuses_a_missing_data_root_with_one_line(tmp_path):
    done = _cli(tmp_path, f"data.root={tmp_path}/nowhere")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: data root {tmp_path}/nowhere has no SHA256SUMS; set data.root=")


@pytest.mark.parametrize("overrides,message", [
    (["runtime=tvm", "model.norm=batch"], "runtime=tvm compiles a batch-1 library"),
    (["runtime=tvm", "hardware=cuda"], "runtime=tvm with hardware=cuda"),
    (["optimization=mlc", "compile.total_trials=-5"], "compile.total_trials=-5 is negative"),
])
def test_impossible_tvm_settings_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(compose_cfg(overrides))


def test_mlc_presets_share_shapes_and_differ_only_in_pruning():
    mlc, prune_mlc = (config.validate(compose_cfg([f"optimization={o}"])) for o in ("mlc", "prune_mlc"))
    assert mlc.runtime.name == prune_mlc.runtime.name == "tvm" and mlc.compile == prune_mlc.compile
    assert (mlc.prune.ratio, prune_mlc.prune.ratio) == (0.0, 0.5)
