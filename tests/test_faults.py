"""Bad input and faults, as a user meets them: each case is a command, the exit code it must give,
and the one line that must name the problem. None may print a traceback, none may leave a run
recorded wrong, and a damaged cache or a refused job never costs a finished run."""
import sqlite3
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import PLATES, TINY, cli, make_root, sweep_runs, write_manifest
from lpr_sweep import cache, tracking

pytestmark = pytest.mark.slow


def _flip_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, different content
    path.write_bytes(bytes(raw))


def corrupt_image(root):
    (root / "images" / f"{PLATES[0]}.jpg").write_bytes(b"not a jpeg")
    write_manifest(root)


def changed_image(root):
    _flip_bytes(root / "images" / f"{PLATES[0]}.jpg")  # SHA256SUMS now disagrees


def empty_weights(root):
    (root / "weights" / "Final_LPRNet_model.pth").write_bytes(b"")
    write_manifest(root)


def truncated_weights(root):
    path = root / "weights" / "Final_LPRNet_model.pth"
    path.write_bytes(path.read_bytes()[:5000])
    write_manifest(root)


def bad_manifest(root):
    (root / "SHA256SUMS").write_text("this is not a checksum line\n")


def corrupt_store(root):
    (root.parent / "mlflow.db").write_bytes(b"SQLite format 3\x00" + b"\x13" * 4000)


CASES = {  # name: (setup of the data root, extra arguments, exit code, line that must appear on stderr)
    "ratio out of range": (None, ["prune.ratio=1.5"], 1, "error: prune.ratio=1.5 is outside [0, 1)"),
    "unknown runtime": (None, ["runtime=tensorrt"], 1, "Could not find 'runtime/tensorrt'"),
    "unknown quant method": (None, ["quant=ort_static", "quant.method=kl"], 1, "quant.method='kl' is not a calibration method"),
    "quant without validation plates": (None, ["quant=ort_static", "data.val_size=0"], 1, "needs validation plates"),
    "splits leave nothing to score": (None, ["data.calib_size=3", "data.val_size=3"], 1, "must leave plates to score of the 6"),
    "corrupt image": (corrupt_image, [], 1, "cannot decode image"),
    "image changed after its checksum": (changed_image, [], 1, "checksum mismatch for"),
    "empty weights": (empty_weights, [], 1, "(empty); restore it with `python -m lpr_sweep.download --dest "),
    "truncated weights": (truncated_weights, [], 1, "cannot load weights"),
    "malformed SHA256SUMS": (bad_manifest, [], 1, "is not a sha256sum line; regenerate it"),
    "corrupt MLflow store": (corrupt_store, [], 1, "cannot be used (") ,
    "cuda without a GPU, as a sweep": (None, ["-m", "hardware=cuda", "prune.ratio=0.1,0.2"], 1,
                                       "hardware=cuda but torch sees no CUDA device"),
    "a missing data root, as a sweep": (None, ["-m", "data.root=/nonexistent/lprnet", "prune.ratio=0.1,0.2"], 1,
                                        "data root /nonexistent/lprnet has no SHA256SUMS"),
    "a bad TVM target": (None, ["runtime=tvm", "compile=untuned", "compile.target=znver99"], 1, "is not a CPU LLVM knows"),
    "a cache folder that cannot be created": (None, ["cache.dir=/dev/null/cache"], 1,
                                              "stage cache folder /dev/null/cache/export cannot be created (Not a directory); set cache.dir"),
    "an artifact store that cannot be written": (None, ["tracking.artifact_root=/dev/null/mlruns"], 1,
                                                 "MLflow artifact store /dev/null/mlruns (experiment 'lpr_sweep') cannot be written"),
    # refused before the sweep's parent run exists: nothing is recorded at all
    "a typo in one list value": (None, ["-m", "runtime=onnxruntime,onnxruntim"], 1, "Could not find 'runtime/onnxruntim'"),
    "a search interval written backwards": (None, ["-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=2",
                                                   "prune.ratio=interval(0.9,0.1)"], 1, "interval(a, b) needs a < b"),
    "a search with no trials": (None, ["-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=0"], 1,
                                "hydra.sweeper.n_trials=0 must be >= 1"),
    "a search choice that does not exist": (None, ["-m", "hydra/sweeper=search", "hydra.sweeper.n_trials=2",
                                                   "runtime=choice(onnxruntime,bogus)"], 1, "runtime=bogus cannot be composed"),
}
NO_PARENT = {"a typo in one list value", "a search interval written backwards", "a search with no trials",
             "a search choice that does not exist", "cuda without a GPU, as a sweep", "a missing data root, as a sweep"}


@pytest.mark.parametrize("case", CASES)
def test_each_fault_exits_with_one_line_and_no_traceback(case, tmp_path):
    setup, args, code, line = CASES[case]
    root = make_root(tmp_path / "data")
    if setup:
        setup(root)
    store = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns"]
    flags = [a for a in args if a.startswith("-")]  # Hydra takes -m only before the overrides
    done = cli(*flags, f"data.root={root}", *TINY, *store, f"hydra.sweep.dir={tmp_path}/sweep", f"hydra.run.dir={tmp_path}/run",
               f"cache.dir={tmp_path}/cache", *[a for a in args if a not in flags], timeout=600)  # the case's values win
    assert done.returncode == code, done.stderr[-2000:]
    assert line in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout
    if case in NO_PARENT and (tmp_path / "mlflow.db").is_file():
        assert sqlite3.connect(tmp_path / "mlflow.db").execute("select count(*) from runs").fetchone() == (0,)
    if (tmp_path / "mlflow.db").is_file() and case != "corrupt MLflow store":
        runs = sqlite3.connect(tmp_path / "mlflow.db").execute("select status from runs").fetchall()
        assert ("FINISHED",) not in runs and ("RUNNING",) not in runs  # nothing recorded as done, nothing left open


def _trial(tmp_path, root, *args):
    store = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns"]
    return cli(*args, f"data.root={root}", *TINY, *store, f"hydra.run.dir={tmp_path}/run", f"cache.dir={tmp_path}/cache"), store


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_a_damaged_cache_entry_is_named_removed_and_rebuilt(tmp_path, damage):
    root = make_root(tmp_path / "data")
    first, store = _trial(tmp_path, root)
    assert first.returncode == 0, first.stderr[-2000:]
    (onnx,) = (tmp_path / "cache" / "export").glob("*/model.onnx")
    _flip_bytes(onnx) if damage == "flipped" else onnx.write_bytes(onnx.read_bytes()[:1000])
    second, _ = _trial(tmp_path, root)
    assert second.returncode == 0 and "Traceback" not in second.stderr
    assert f"cache: entry {onnx.parent} is damaged" in second.stdout + second.stderr
    _, _, runs = sweep_runs(store)
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert runs[0].data.metrics["accuracy"] == runs[1].data.metrics["accuracy"]
    assert cache.damage(onnx.parent) is None  # rebuilt: the entry matches its seal again


def test_resume_does_not_take_a_trial_on_other_data_for_done(tmp_path):
    small, other = make_root(tmp_path / "a"), make_root(tmp_path / "b", seed=1)
    done, store = _trial(tmp_path, small, "-m", "prune.ratio=0.1", f"hydra.sweep.dir={tmp_path}/s1")
    assert done.returncode == 0, done.stderr[-2000:]
    again, _ = _trial(tmp_path, other, "-m", "prune.ratio=0.1", "resume=true", f"hydra.sweep.dir={tmp_path}/s2")
    assert again.returncode == 0 and "resume: already FINISHED" not in again.stdout + again.stderr
    same, _ = _trial(tmp_path, other, "-m", "prune.ratio=0.1", "resume=true", f"hydra.sweep.dir={tmp_path}/s3")
    assert "resume: already FINISHED" in same.stdout + same.stderr


def test_two_sweeps_cannot_share_a_folder(tmp_path):
    root = make_root(tmp_path / "data")
    first, store = _trial(tmp_path, root, "-m", "prune.ratio=0.1", f"hydra.sweep.dir={tmp_path}/s")
    assert first.returncode == 0
    second, _ = _trial(tmp_path, root, "-m", "prune.ratio=0.2", f"hydra.sweep.dir={tmp_path}/s")
    assert second.returncode == 1 and f"error: sweep folder {tmp_path}/s is already used by another sweep" in second.stderr
    _, parents, runs = sweep_runs(store)
    assert len(parents) == 1 and [r.data.params["prune.ratio"] for r in runs] == ["0.1"]


def test_two_sweeps_started_at_once_in_a_fresh_folder_are_both_recorded(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    root = make_root(tmp_path / "data")
    store = [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"tracking.artifact_root={tmp_path}/mlruns"]
    procs = [subprocess.Popen([sys.executable, "-m", "lpr_sweep", "-m", f"prune.ratio={r}", f"data.root={root}", *TINY, *store,
                               f"cache.dir={tmp_path}/cache"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
             for r in ("0.1", "0.2")]
    outs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    _, parents, runs = sweep_runs(store)
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert sorted(r.data.params["prune.ratio"] for r in runs) == ["0.1", "0.2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {p.info.run_id for p in parents}
    assert len(list((tmp_path / "multirun").glob("*/*"))) == 2  # one folder each, though started in the same second


def test_a_trial_whose_error_cannot_be_recorded_still_ends_failed(tmp_path, monkeypatch):
    """The error path raises too (the artifact store refuses the traceback): FAILED, never FINISHED."""
    import mlflow

    from lpr_sweep.tracking import record

    cfg = tracking.TrackingConfig(uri=f"sqlite:///{tmp_path}/t.db", artifact_root=str(tmp_path / "a"))

    def refuse(*args, **kwargs):
        raise PermissionError("read-only artifact folder")

    monkeypatch.setattr(mlflow, "log_text", refuse)
    with pytest.raises(RuntimeError):
        with record.trial(cfg, run_name="t", params={}, parent_run_id=None):
            raise RuntimeError("boom")
    (run,) = MlflowClient().search_runs([tracking.experiment_id(cfg)])
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"
