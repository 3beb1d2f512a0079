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


@pytest.mark.parametrize("override,message", [
    ("+prune.ration=0.5", r"^prune.ration is not a setting \(did you mean prune.ratio\?\); fix or drop that override$"),
    ("+data.bogus.x=2", r"^data.bogus is not a setting \(data has calib_size, .*\)"),
    ("+resum=true", r"^resum is not a setting \(did you mean resume\?\)"),
])
def test_a_key_added_with_plus_that_no_stage_reads_is_refused(override, message):
    # Hydra suggests the + itself for a mistyped key; without this the trial ran with the default.
    with pytest.raises(ConfigError, match=message):
        config.validate(compose_cfg([override]))
    config.validate(compose_cfg(["+experiment=netadapt"]))  # what the shipped groups add is read


@pytest.mark.parametrize("override,message", [
    ("model.weights=/nowhere/lprnet.pth", "error: model.weights=/nowhere/lprnet.pth is /nowhere/lprnet.pth, which does not exist; "
                                          "point model.weights at"),
    ("data.val_size=5000", "error: data.calib_size=100 + data.val_size=5000 must leave plates to score of the 1000; lower them"),
    ("compile.target=znver99", "error: compile.target='znver99' is not a CPU LLVM knows"),
])
def test_what_a_trial_would_find_too_late_fails_before_any_run(tmp_path, override, message):
    extra = ["runtime=tvm"] if override.startswith("compile") else []
    for mode in ([], ["-m"]):  # a single run, and a sweep (before its parent run)
        done = _cli(tmp_path, *mode, override, *extra)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
        (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]  # a sweep's names the job first
        assert message.removeprefix("error: ") in line, done.stderr[-2000:]
        assert not (tmp_path / "mlflow.db").exists()  # no run, FAILED or other, was recorded


@pytest.mark.parametrize("args", [["hydra.run.dir=/proc/lpr_sweep"], ["-m", "hydra.sweep.dir={file}/sweep"]])
def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, args):
    (tmp_path / "file").write_text("not a folder")
    done = cli(*[a.format(file=tmp_path / "file") for a in args], f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", timeout=300)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "cannot be written" in line and "point hydra." in line and "at a writable folder" in line
    assert not (tmp_path / "mlflow.db").exists()


def test_a_damaged_data_root_fails_before_any_run(tmp_path, tiny_root):
    (tiny_root / "weights" / "Final_LPRNet_model.pth").write_bytes(b"truncated")
    done = _cli(tmp_path, "-m", f"data.root={tiny_root}", "prune.ratio=0.1,0.5")
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("error:")]
    assert "checksum mismatch for" in line and "Final_LPRNet_model.pth" in line and "python -m lpr_sweep.download --dest" in line
    assert not (tmp_path / "mlflow.db").exists()
