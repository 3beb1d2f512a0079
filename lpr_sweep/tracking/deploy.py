"""The deployable: what a trial measured, as an MLflow Model that reads plates from images.

Every finished trial logs one (artifact path ``model``): a pyfunc that wraps the trial's own
runtime and files (ONNX on ONNX Runtime, an OpenVINO IR, a TVM library with its params, or a torch
program), with the preprocessing and the CTC greedy decoding inside, so ``mlflow models serve``
or ``mlflow.pyfunc.load_model`` reads plates with no code of the user's.

- Input: a batch of plate images as OpenCV decodes them, uint8 (N, H, W, 3), BGR, at least
  ``MIN_W`` x ``MIN_H`` pixels. Images that are not 94x24 are resized as the data loader does
  (``data.preprocess``). JSON has no uint8, so integer pixel values 0-255 are taken too; anything
  else (floats such as an image scaled to [0, 1], another rank or channel count, an empty batch,
  smaller images) is refused with one line, which ``mlflow models serve`` answers with HTTP 400.
  That is why the signature declares no input schema: with one, MLflow's server casts a float
  request to uint8 before the model sees it, and [0, 1] floats read as a black image.
- Output: one row per image: ``plate`` (the decoded string), ``confidence`` (the mean over the 18
  columns of the softmax probability of the greedy path's class: how sure the model is of its own
  reading, not the probability that the plate is right; a blank image still scores above 0.9) and
  ``blank`` (the image has no contrast, pixel standard deviation below ``BLANK_STD``: its plate
  means nothing whatever the confidence).

The files go in as one artifact folder with ``deploy.json``: the runtime's name, the file it loads
(the runtime's first artifact) and the threads. MLflow's ONNX flavor alone would serve logits, not
plates, and would not cover OpenVINO, TVM or torch programs, so one pyfunc serves them all.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

SPEC = "deploy.json"
MIN_H, MIN_W = 12, 47  # half the model's 24x94 input: a smaller crop holds no readable plate
BLANK_STD = 2.0  # pixel standard deviation (0-255) below which an image is blank
INPUT = (f"uint8 (N, H, W, 3) BGR images as OpenCV decodes them (integers 0-255 in JSON), at least {MIN_W}x{MIN_H} px; "
         "output: plate, confidence, blank")
_SERVING_PACKAGES = ("mlflow", "numpy", "pandas", "opencv-python-headless")


def confidence(logits: np.ndarray) -> np.ndarray:
    """(N, classes, T) logits -> (N,) mean over T of the softmax probability of the argmax class."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return probs.max(axis=1).mean(axis=1)


def check_images(images: Any) -> np.ndarray:
    """The batch as uint8 (N, H, W, 3), or ValueError with one line that names what is wrong and the fix."""
    try:
        a = np.asarray(images)
    except ValueError:  # a ragged list: numpy's own words say nothing about images
        raise ValueError("images of different sizes in one batch; send one size per batch (each is resized to 94x24), "
                         f"or one request per image: {INPUT}") from None
    if a.dtype == object:
        raise ValueError(f"images of different sizes or types in one batch; send one size per batch: {INPUT}")
    if a.size == 0:
        raise ValueError(f"empty batch {a.shape}: send at least one image, {INPUT}")
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), BGR, got shape {a.shape}: a single image needs a batch axis "
                         "(img[None]); grey or BGRA images need cv2.cvtColor to BGR")
    if a.dtype != np.uint8:
        integral = np.issubdtype(a.dtype, np.integer) and a.min() >= 0 and a.max() <= 255
        if not integral:
            # the fix depends on the range: [0, 1] floats were scaled, [0, 255] ones only need the type
            fix = ("an image scaled to [0, 1] needs (img * 255).round().astype('uint8')" if a.max() <= 1 else
                   "pixel values in [0, 255] need img.round().clip(0, 255).astype('uint8')")
            raise ValueError(f"expected uint8 pixel values 0-255 as OpenCV decodes an image, got {a.dtype} in "
                             f"[{a.min():g}, {a.max():g}]; {fix}")
        a = a.astype(np.uint8)
    if a.shape[1] < MIN_H or a.shape[2] < MIN_W:
        raise ValueError(f"images of {a.shape[2]}x{a.shape[1]} px are too small to hold a plate; send crops of at least "
                         f"{MIN_W}x{MIN_H} px (the model reads 94x24)")
    return a


def read_plates(run: Any, images: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Plates and confidences of uint8 BGR images (N, H, W, 3) through a runtime."""
    from lpr_sweep import data, evaluate

    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3) in BGR order, got {images.dtype} {images.shape}")
    logits = run(np.ascontiguousarray(np.stack([data.preprocess(img) for img in images])))
    return evaluate.decode(logits), confidence(logits)


def blank(images: np.ndarray) -> np.ndarray:
    """(N,) True where an image has no contrast to read."""
    return images.reshape(len(images), -1).std(axis=1) < BLANK_STD


class PlateReader(mlflow.pyfunc.PythonModel):
    """The pyfunc: loads the trial's runtime from the artifact folder, reads plates from images."""

    def load_context(self, context) -> None:
        from lpr_sweep import runtime
        from lpr_sweep.hardware import HardwareConfig
        from lpr_sweep.model_file import ModelFile

        folder = Path(context.artifacts["files"])
        spec = json.loads((folder / SPEC).read_text())
        path = folder / spec["file"]
        workdir = Path(tempfile.mkdtemp(prefix="lpr_sweep-serve-"))
        # a spec without precision predates runtime.precision: those models ran fp32
        cfg = runtime.RuntimeConfig(spec["runtime"], precision=spec.get("precision", "fp32"))
        self.runtime = runtime.build(cfg, ModelFile(None, path, artifact=path),
                                     HardwareConfig(threads=spec["threads"]), workdir)

    def predict(self, context, model_input, params=None):
        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            images = check_images(model_input)
        except ValueError as e:  # the server answers an MlflowException of this code with HTTP 400
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        plates, conf = read_plates(self.runtime, images)
        return pd.DataFrame({"plate": plates, "confidence": conf.astype(np.float64), "blank": blank(images)})


def files_folder(rt: Any, runtime_name: str, threads: int, out: Path, precision: str = "fp32") -> Path:
    """The runtime's deployable files and the spec that loads them back, in one folder."""
    out.mkdir(parents=True, exist_ok=True)
    for path in rt.artifacts:
        shutil.copy(path, out / Path(path).name)
    spec = {"runtime": runtime_name, "file": Path(rt.artifacts[0]).name, "threads": threads, "precision": precision}
    (out / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    return out


def requirements(packages: tuple[str, ...]) -> list[str]:
    """Pins of what the trial ran with, so ``--env-manager local`` in the project's venv serves it."""
    pins = []
    for package in sorted({*_SERVING_PACKAGES, *packages, "lpr_sweep"}):
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    # No input schema: the model checks its input itself (check_images); see the module docstring.
    return ModelSignature(outputs=Schema([ColSpec("string", "plate"), ColSpec("double", "confidence"), ColSpec("boolean", "blank")]))
