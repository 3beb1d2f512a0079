"""The deployable: what a trial measured, as an MLflow Model that reads plates from images.

Every finished trial logs one (artifact path ``model``): a pyfunc that wraps the trial's own
runtime and files (ONNX on ONNX Runtime, an OpenVINO IR, a TVM library with its params, or a torch
program), with the preprocessing and the CTC greedy decoding inside, so ``mlflow models serve``
or ``mlflow.pyfunc.load_model`` reads plates with no code of the user's.

- Input: a batch of plate images as OpenCV decodes them, uint8 (N, H, W, 3), BGR. Images that are
  not 94x24 are resized as the data loader does (``data.preprocess``).
- Output: one row per image: ``plate`` (the decoded string) and ``confidence`` (the mean over the
  18 columns of the softmax probability of the greedy path's class).

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
_SERVING_PACKAGES = ("mlflow", "numpy", "pandas", "opencv-python-headless")


def confidence(logits: np.ndarray) -> np.ndarray:
    """(N, classes, T) logits -> (N,) mean over T of the softmax probability of the argmax class."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return probs.max(axis=1).mean(axis=1)


def read_plates(run: Any, images: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Plates and confidences of uint8 BGR images (N, H, W, 3) through a runtime."""
    from lpr_sweep import data, evaluate

    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3) in BGR order, got {images.dtype} {images.shape}")
    logits = run(np.ascontiguousarray(np.stack([data.preprocess(img) for img in images])))
    return evaluate.decode(logits), confidence(logits)


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
        self.runtime = runtime.build(spec["runtime"], ModelFile(None, path, artifact=path),
                                     HardwareConfig(threads=spec["threads"]), workdir)

    def predict(self, context, model_input, params=None):
        import pandas as pd

        plates, conf = read_plates(self.runtime, np.asarray(model_input))
        return pd.DataFrame({"plate": plates, "confidence": conf.astype(np.float64)})


def files_folder(rt: Any, runtime_name: str, threads: int, out: Path) -> Path:
    """The runtime's deployable files and the spec that loads them back, in one folder."""
    out.mkdir(parents=True, exist_ok=True)
    for path in rt.artifacts:
        shutil.copy(path, out / Path(path).name)
    spec = {"runtime": runtime_name, "file": Path(rt.artifacts[0]).name, "threads": threads}
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
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
        outputs=Schema([ColSpec("string", "plate"), ColSpec("double", "confidence")]),
    )
