"""``python -m lpr_sweep`` as users launch it: parallel, interrupted and resumed, on Ray, against a server."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from conftest import REPO, TINY, cli, compose_cfg, free_port, sweep_runs
from lpr_sweep import tracking

SIX = "prune.ratio=0.1,0.2,0.3,0.4,0.5,0.6"
FOUR = "prune.ratio=0.1,0.2,0.3,0.4"


def _args(tmp_path, tiny_root, store, *overrides):
    return ["-m", f"data.root={tiny_root}", *TINY, *overrides, *store, f"hydra.sweep.dir={tmp_path}/sweep", f"cache.dir={tmp_path}/cache"]


def _sweep(tmp_path, tiny_root, store, *overrides, timeout=600):
    return cli(*_args(tmp_path, tiny_root, store, *overrides), timeout=timeout)


def _runs(store):
    _, parents, children = sweep_runs(store)
    return parents, children


@pytest.mark.slow
def test_two_way_parallel_sweep_records_six_finished_trials(tmp_path, tiny_root, store):
    done = _sweep(tmp_path, tiny_root, store, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", SIX)
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,), children = _runs(store)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_trials"] == 6
    assert sorted(r.data.params["prune.ratio"] for r in children) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    cores = len(os.sched_getaffinity(0))
    jobs = min(2, cores)
    assert {(r.data.params["protocol.parallel_jobs"], r.data.params["protocol.threads"]) for r in children} == {
        (str(jobs), str(max(1, cores // jobs)))}
    assert all(r.data.metrics["stage_evaluate_seconds"] > 0 for r in children)


@pytest.mark.slow
def test_failing_trial_is_isolated_in_a_parallel_sweep(tmp_path, tiny_root, store):
    # a weights file that exists (so the sweep's check before it starts passes) but does not load
    (tmp_path / "bad.pth").write_bytes(b"truncated")
    done = _sweep(tmp_path, tiny_root, store, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                  f"model.weights=weights/Final_LPRNet_model.pth,{tmp_path}/bad.pth", "prune.ratio=0.1,0.2")
    assert done.returncode != 0 and "error: 2 trials finished, 2 failed, 0 never recorded" in done.stderr
    (parent,), children = _runs(store)
    assert parent.info.status == "FAILED"
    assert sorted(r.info.status for r in children) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    assert all(r.data.tags["error"].startswith("DataError: cannot load weights") for r in children if r.info.status == "FAILED")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_sweep_is_closed_and_resume_reruns_only_the_rest(tmp_path, tiny_root, store, sig):
    # A trial's timing lasts seconds, so that the signal lands while the second trial runs. The test waits for
    # a finished trial rather than a fixed time: on a slow host a trial took over two minutes.
    slow = "benchmark.calls_per_block=300"
    proc = subprocess.Popen([sys.executable, "-m", "lpr_sweep", *_args(tmp_path, tiny_root, store, FOUR, slow)], cwd=REPO,
                            stdout=open(tmp_path / "out.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline, children = time.time() + 600, []
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if (tmp_path / "sweep" / tracking.PARENT_FILE).exists():  # the store exists: safe to read
                _, children = _runs(store)
                if any(r.info.status == "FINISHED" for r in children):
                    break
        sent = f"signal sent at {time.strftime('%H:%M:%S')} with {[r.info.status for r in children]}"
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        proc.kill()
    (parent,), children = _runs(store)
    finished = {r.info.run_id for r in children if r.info.status == "FINISHED"}
    log = sent + "\n" + (tmp_path / "out.log").read_text()[-3000:]
    assert parent.info.status == "KILLED", log
    assert "Traceback" not in log and f"error: interrupted by {sig.name}; finished trials are kept" in log, log
    assert proc.returncode == 128 + sig, log
    assert 1 <= len(finished) < 4, log
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)  # nothing left RUNNING
    if sig != signal.SIGTERM:
        return  # both signals take the same path from here; resuming once is enough (CI time)

    done = _sweep(tmp_path, tiny_root, store, FOUR, slow, "resume=true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("resume: already FINISHED") == len(finished)
    (parent2,), after = _runs(store)
    assert parent2.info.run_id == parent.info.run_id and parent2.info.status == "FINISHED"
    latest = tracking.latest_per_config(after)
    assert len(latest) == 4 and all(r.info.status == "FINISHED" for r in latest)
    assert finished <= {r.info.run_id for r in latest}  # the earlier finished runs were kept, not re-run


@pytest.mark.slow
def test_ray_sweep_runs_every_trial(tmp_path, tiny_root, store):
    done = _sweep(tmp_path, tiny_root, store, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                  "prune.ratio=0.1,0.2", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,), children = _runs(store)
    assert parent.info.status == "FINISHED"
    assert sorted(r.data.params["prune.ratio"] for r in children) == ["0.1", "0.2"]
    assert all(r.info.status == "FINISHED" for r in children)
    cores = os.cpu_count() if not hasattr(os, "sched_getaffinity") else len(os.sched_getaffinity(0))
    # one CPU reserved per Ray task, so as many trials as cores at once, one thread each
    assert {(r.data.params["protocol.parallel_jobs"], r.data.params["protocol.threads"]) for r in children} == {(str(cores), "1")}
    assert {r.data.tags["hw.node_ip"] for r in children} == {"127.0.0.1"}  # the local instance stays on loopback


def test_slurm_preset_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.cpus_per_task, launcher.timeout_min) == ("gpu", 4, 60)


@pytest.mark.slow
def test_trial_against_a_local_tracking_server(tmp_path, tiny_root, server):
    from lpr_sweep import pipeline

    overrides = ["tracking=server", f"tracking.uri={server}", f"data.root={tiny_root}", *TINY, f"cache.dir={tmp_path}/cache"]
    metrics = pipeline.run(compose_cfg(overrides), workdir=tmp_path / "w")
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("lpr_sweep")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["accuracy"] == metrics["accuracy"]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "model.onnx" in {a.path for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_unreachable_server_fails_the_sweep_at_once(tmp_path, tiny_root):
    t0 = time.time()
    done = cli("-m", "tracking=server", f"tracking.uri=http://127.0.0.1:{free_port()}", "tracking.request_timeout_s=2",
               f"data.root={tiny_root}", *TINY, "prune.ratio=0.1,0.2", f"hydra.sweep.dir={tmp_path}/s", timeout=300)
    assert done.returncode != 0 and "is unreachable" in done.stderr and "start it" in done.stderr
    assert time.time() - t0 < 60


@pytest.mark.slow
def test_a_resume_while_the_sweep_runs_is_refused_and_no_trial_runs_twice(tmp_path, tiny_root, store):
    slow = "benchmark.calls_per_block=1500"
    proc = subprocess.Popen([sys.executable, "-m", "lpr_sweep", *_args(tmp_path, tiny_root, store, "prune.ratio=0.15,0.35,0.55", slow)],
                            cwd=REPO, stdout=open(tmp_path / "out.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "sweep" / tracking.PARENT_FILE).exists():
            time.sleep(0.5)
        time.sleep(3)  # the first trial is running
        # the same command from another folder (a new hydra.sweep.dir, as a user gets by default)
        again = cli(*_args(tmp_path, tiny_root, store, "prune.ratio=0.15,0.35,0.55", slow, "resume=true")[:-2],
                    f"hydra.sweep.dir={tmp_path}/again", f"cache.dir={tmp_path}/cache")
        assert proc.poll() is None, "the sweep ended before the resume was tried; the test proves nothing"
        assert again.returncode == 1 and f"is still running (pid {proc.pid} on " in again.stderr, again.stderr[-2000:]
        assert "Traceback" not in again.stderr
        assert proc.wait(timeout=600) == 0, (tmp_path / "out.log").read_text()[-3000:]
    finally:
        proc.kill()
    (parent,), children = _runs(store)
    assert parent.info.status == "FINISHED" and len(children) == 3  # each trial once
    assert all(r.info.status == "FINISHED" and "error" not in r.data.tags for r in children)
    # the owner is gone: a resume now takes over and finds everything done
    done = cli(*_args(tmp_path, tiny_root, store, "prune.ratio=0.15,0.35,0.55", slow, "resume=true")[:-2],
               f"hydra.sweep.dir={tmp_path}/later", f"cache.dir={tmp_path}/cache")
    assert done.returncode == 0 and done.stdout.count("resume: already FINISHED") + done.stderr.count("resume: already FINISHED") == 3


def test_the_sweep_lock_names_its_owner_and_dies_with_it(tmp_path, monkeypatch):
    from lpr_sweep.tracking import sweep

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    owner = subprocess.Popen([sys.executable, "-c", "import sys, time; from lpr_sweep.tracking import sweep; sweep.claim('p1'); "
                              "print('held', flush=True); time.sleep(60)"], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    try:
        assert owner.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit, match=f"sweep p1 is still running \\(pid {owner.pid} on "):
            sweep.claim("p1")
    finally:
        owner.kill()
        owner.wait()
    assert sweep.claim("p1").startswith(f"pid {os.getpid()} on ")  # its owner died: taken over
    assert sweep.claim("p2")  # other sweeps are not affected


@pytest.mark.slow
def test_a_resume_with_an_edited_list_keeps_the_trials_it_reuses_and_names_the_rest(tmp_path, tiny_root, store):
    from lpr_sweep import decision

    first = cli(*_args(tmp_path / "a", tiny_root, store, "prune.ratio=0.1,0.3,0.5"))
    assert first.returncode == 0, first.stderr[-2000:]
    second = cli(*_args(tmp_path / "b", tiny_root, store, "prune.ratio=0.1,0.7", "resume=true"))
    assert second.returncode == 0, second.stderr[-2000:]
    cfg, parents, _ = sweep_runs(store)
    newest = max(parents, key=lambda r: r.info.start_time)
    assert newest.data.metrics["n_trials"] == 2  # 0.1 counts, though it ran in the first sweep
    sweep = decision.load(cfg, newest.info.run_id)
    names = sorted(t.name for t in sweep.trials)
    assert len(names) == 2 and names[0].startswith("0.1 (reused from sweep") and names[1] == "0.7"
    (note,) = sweep.notes
    assert "also ran 0.3, 0.5" in note or "also ran 0.5, 0.3" in note
    assert len([r for r in MlflowClient().search_runs([tracking.experiment_id(cfg)], "tags.`lpr_sweep.role` = 'trial'")]) == 4
