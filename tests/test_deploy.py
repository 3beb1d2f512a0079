"""The logged MLflow Model reads the same plates its trial scored: per runtime, int8 and structured,
through ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and ``python -m lpr_sweep.predict``."""
import csv
import io
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from conftest import TINY, compose_cfg
from lpr_sweep import data, pipeline, predict, tracking
from lpr_sweep.tracking import deploy


def _images(root, files):
    return np.stack([data.read_bgr(root / f) for f in files])


def test_confidence_is_the_mean_greedy_probability():
    logits = np.zeros((1, 3, 2), np.float32)
    logits[0, 0, :] = [np.log(3.0), 0.0]  # column 0: p = 3/5, column 1: p = 1/3 for every class
    assert deploy.confidence(logits)[0] == pytest.approx((0.6 + 1 / 3) / 2)


def test_images_must_be_uint8_bgr_batches():
    with pytest.raises(ValueError, match=r"expected uint8 images of shape \(N, H, W, 3\)"):
        deploy.read_plates(lambda x: x, np.zeros((24, 94, 3), np.uint8))


@pytest.mark.parametrize("images, line", [
    (np.full((1, 24, 94, 3), 0.5), "expected uint8 pixel values 0-255 as OpenCV decodes an image, got float64 in [0.5, 0.5]"),
    (np.zeros((24, 94, 3), np.uint8), "expected images of shape (N, H, W, 3), BGR, got shape (24, 94, 3)"),
    (np.zeros((1, 24, 94, 4), np.uint8), "got shape (1, 24, 94, 4)"),
    (np.zeros((0,)), "empty batch (0,): send at least one image"),
    (np.zeros((1, 1, 1, 3), np.uint8), "images of 1x1 px are too small to hold a plate; send crops of at least 47x12 px"),
    (np.full((1, 24, 94, 3), 300), "got int64 in [300, 300]"),
    (np.full((1, 24, 94, 3), 0.5), "an image scaled to [0, 1] needs (img * 255).round().astype('uint8')"),
    (np.full((1, 24, 94, 3), 200.0, np.float32), "pixel values in [0, 255] need img.round().clip(0, 255).astype('uint8')"),
    ([np.zeros((24, 94, 3), np.uint8), np.zeros((30, 120, 3), np.uint8)], "images of different sizes in one batch; send one size per batch"),
])
def test_the_model_refuses_what_it_cannot_read_in_one_line(images, line):
    with pytest.raises(ValueError) as e:
        deploy.check_images(images)
    assert line in str(e.value) and "\n" not in str(e.value)


def test_integer_pixels_from_json_are_taken_and_blank_images_are_flagged():
    as_json = np.asarray(np.full((2, 24, 94, 3), 200).tolist())  # what the server parses: int64
    assert deploy.check_images(as_json).dtype == np.uint8
    noisy = np.random.default_rng(0).integers(0, 256, (1, 24, 94, 3), dtype=np.uint8)
    assert list(deploy.blank(np.concatenate([np.zeros((1, 24, 94, 3), np.uint8), noisy]))) == [True, False]


def _trial(tmp_path, store, *overrides):
    metrics = pipeline.run(compose_cfg([*overrides, *store]), workdir=tmp_path / "w")
    (run,) = mlflow.search_runs(experiment_names=["lpr_sweep"], output_format="list", order_by=["start_time DESC"], max_results=1)
    rows = list(csv.DictReader(io.StringIO(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/predictions.csv"))))
    return metrics, run, rows


@pytest.mark.parametrize("overrides", [
    ["runtime=onnxruntime"],
    pytest.param(["runtime=openvino"], marks=pytest.mark.slow),
    pytest.param(["runtime=torch"], marks=pytest.mark.slow),
    pytest.param(["quant=nncf", "runtime=openvino"], marks=pytest.mark.slow),
    pytest.param(["optimization=prune_structured", "prune.ratio=0.5"], marks=pytest.mark.slow),
    pytest.param(["runtime=tvm", "compile=untuned"], marks=pytest.mark.slow),
    pytest.param(["runtime=openvino", "runtime.precision=bf16"], marks=[pytest.mark.slow, pytest.mark.skipif(
        "BF16" not in __import__("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"), reason="no bf16 on this CPU")]),
], ids=["onnxruntime", "openvino", "torch", "int8-nncf", "structured", "tvm", "openvino-bf16"])
def test_the_logged_model_reproduces_its_trial_on_tiny_data(tmp_path, tiny_root, store, overrides):
    _, run, rows = _trial(tmp_path, store, f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", *TINY, *overrides)
    model = mlflow.pyfunc.load_model(run.data.tags[tracking.MODEL_TAG])
    logged = mlflow.get_logged_model(run.data.tags[tracking.MODEL_TAG].removeprefix("models:/"))
    assert logged.name == f"lprnet {run.info.run_name}".replace(".", "_") and logged.source_run_id == run.info.run_id
    out = model.predict(_images(tiny_root, [r["file"] for r in rows]))
    assert list(out["plate"]) == [r["prediction"] for r in rows]
    assert ((out["confidence"] > 0) & (out["confidence"] <= 1)).all() and not out["blank"].any()
    assert model.metadata.get_input_schema() is None and "uint8 (N, H, W, 3) BGR" in model.metadata.metadata["input"]
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"expected uint8 pixel values 0-255"):
        model.predict(_images(tiny_root, [rows[0]["file"]]) / 255.0)
    (spec,) = Path(mlflow.artifacts.download_artifacts(run.data.tags[tracking.MODEL_TAG], dst_path=str(tmp_path / "m"))).rglob(deploy.SPEC)
    assert json.loads(spec.read_text())["precision"] == run.data.params["runtime.precision"]  # served as it was measured


@pytest.mark.slow
def test_real_plates_through_load_model_the_server_and_predict(tmp_path, real_root, store, capsys):
    """A real trial (structured + NNCF int8 on OpenVINO): its model, served on 127.0.0.1, reads back
    the plates its predictions.csv holds; so does `python -m lpr_sweep.predict`."""
    metrics, run, rows = _trial(tmp_path, store, "optimization=prune_structured_quant", "benchmark.loads=2", "benchmark.blocks=2",
                                "benchmark.max_blocks=2", "benchmark.throughput_repeats=1")
    uri = run.data.tags[tracking.MODEL_TAG]
    files = [r["file"] for r in rows]
    capsys.readouterr()  # the trial's own output
    out = mlflow.pyfunc.load_model(uri).predict(_images(real_root, files))
    assert list(out["plate"]) == [r["prediction"] for r in rows]  # all 700 scored plates
    assert np.mean(out["plate"] == [r["label"] for r in rows]) == pytest.approx(metrics["accuracy"], abs=1e-4)

    port = _free_port()
    # as from an activated venv: the server starts uvicorn from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": store[0].split("=", 1)[1],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                               "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        five = _images(real_root, files[:5])
        body = json.dumps({"inputs": five.tolist()}).encode()
        answer = _post(f"http://127.0.0.1:{port}/invocations", body)
        assert [p["plate"] for p in answer["predictions"]] == [r["prediction"] for r in rows[:5]]
        assert not any(p["blank"] for p in answer["predictions"])
        black = _post(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": [[[[0, 0, 0]] * 94] * 24]}).encode())
        assert black["predictions"][0]["blank"] is True
        for bad, line in [((five / 255.0).round(3).tolist(), "expected uint8 pixel values 0-255"), ([], "empty batch"),
                          ([[[[1, 2, 3]]]], "images of 1x1 px are too small to hold a plate")]:
            status, text = _post_status(f"http://127.0.0.1:{port}/invocations", json.dumps({"inputs": bad}).encode())
            assert status == 400 and line in text, (status, text[-500:])
    finally:
        server.terminate()
        server.wait(timeout=30)

    code = predict.main(["--model", uri, "--tracking-uri", store[0].split("=", 1)[1], str(real_root / files[0]),
                         str(tmp_path / "missing.jpg")])
    printed = capsys.readouterr()
    assert code == 1 and printed.out.strip().split("\t")[:2] == [str(real_root / files[0]), rows[0]["prediction"]]
    assert f"error: cannot read {tmp_path / 'missing.jpg'}" in printed.err


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url, body, deadline_s=180):
    deadline = time.time() + deadline_s
    while True:
        try:
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(request, timeout=30).read())
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(1)


def test_predict_names_an_unreadable_image_and_reads_the_rest(tmp_path, tiny_root, store, capsys):
    _, run, rows = _trial(tmp_path, store, f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", *TINY)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    good = tiny_root / rows[0]["file"]
    tiny, black = tmp_path / "tiny.jpg", tmp_path / "black.jpg"  # readable, but too small / without a plate
    cv2.imwrite(str(tiny), np.full((1, 1, 3), 128, np.uint8))
    cv2.imwrite(str(black), np.zeros((24, 94, 3), np.uint8))
    capsys.readouterr()  # the trial's own output
    code = predict.main(["--model", run.data.tags[tracking.MODEL_TAG], "--tracking-uri", store[0].split("=", 1)[1],
                         str(bad), str(tiny), str(good), str(black)])
    out, err = capsys.readouterr()
    assert code == 1 and err.strip().splitlines() == [
        f"error: cannot decode image {bad}: unreadable or corrupt; replace or remove it",
        f"error: {tiny}: images of 1x1 px are too small to hold a plate; send crops of at least 47x12 px (the model reads 94x24)"]
    lines = out.strip().splitlines()
    assert lines[0].split("\t")[:2] == [str(good), rows[0]["prediction"]] and "blank" not in lines[0]
    assert lines[1].startswith(f"{black}\t") and lines[1].endswith("\tblank image: no plate")


def test_predict_without_a_champion_says_how_to_get_one(tmp_path, tiny_root, capsys):
    image = tiny_root / "images" / f"{__import__('conftest').PLATES[0]}.jpg"
    assert predict.main(["--tracking-uri", f"sqlite:///{tmp_path}/empty.db", str(image)]) == 1
    assert "cannot load model models:/lpr_sweep@champion" in capsys.readouterr().err


def _post_status(url, body):
    """(HTTP status, body) of a request the server refuses."""
    import urllib.error

    try:
        response = urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=60)
        return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
