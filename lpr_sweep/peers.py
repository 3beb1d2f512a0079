"""The peers a user builds by hand, without lpr_sweep: the bar a champion has to clear (``make bench``).

Each follows the tools' own tutorials and nothing of this project's export:
- ``plain export``: ``torch.onnx.export`` (TorchScript exporter, opset 17, dynamic batch) of LPRNet
  with upstream's weights, as upstream's code computes it (channel stride as a strided slice; the
  per-plate norm, which equals upstream's at batch 1). No denormal flush, no channel surgery.
- ``ORT fp32``: that file in ONNX Runtime with default session options (threads set).
- ``OpenVINO defaults``: ``core.compile_model(file, "CPU")`` with only the threads set; on CPUs with
  bf16 (AMX, AVX512_BF16) OpenVINO then runs fp32 models in bf16 (``precision`` says what it chose).
- ``OpenVINO + NNCF int8 defaults``: ``nncf.quantize(model, nncf.Dataset(calibration plates))``
  with every default, then compiled as above. It calibrates on the same plates as the project's
  int8 trials, which are never scored.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from lpr_sweep import model as lprnet
from lpr_sweep import size

PLAIN_ORT = "peer: plain export, ORT fp32"
PLAIN_OV = "peer: plain export, OpenVINO defaults"
PLAIN_NNCF = "peer: plain export, OpenVINO + NNCF int8 defaults"
NAMES = (PLAIN_ORT, PLAIN_OV, PLAIN_NNCF)


class Peer:
    """A hand-built model: called on (N, 3, 24, 94) batches, with its files and constants like a runtime's."""

    def __init__(self, name: str, call, path: Path, precision: str):
        self.name, self._call, self.path, self.precision = name, call, path, precision
        self.artifacts = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._call(batch)

    def constants(self) -> Iterator[np.ndarray]:
        from lpr_sweep.runtime.openvino import ir_tensors

        return ir_tensors(self.path) if self.path.suffix == ".xml" else size.onnx_tensors(self.path)


def plain_export(weights: Path, out: Path) -> Path:
    import torch

    net = lprnet.load(weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notices
        torch.onnx.export(net, (torch.zeros(1, 3, *lprnet.INPUT_HW),), str(out), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return out


def build(weights: Path, calib: np.ndarray, threads: int, workdir: Path) -> dict[str, Peer]:
    """The three peers, from upstream's weights and the calibration plates."""
    import nncf
    import onnxruntime as ort
    import openvino as ov

    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = plain_export(weights, workdir / "plain.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    peers = {PLAIN_ORT: Peer(PLAIN_ORT, lambda x: session.run(None, {"input": x})[0], onnx_path, "fp32")}

    core = ov.Core()
    logging.getLogger("nncf").setLevel(logging.ERROR)  # "only 100 samples, fewer than the subset size 300": it uses them all
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        int8 = nncf.quantize(core.read_model(onnx_path), nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]))
    int8_path = workdir / "plain_int8.xml"
    ov.save_model(int8, str(int8_path))
    for name, path in ((PLAIN_OV, onnx_path), (PLAIN_NNCF, int8_path)):
        compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        peers[name] = Peer(name, lambda x, r=request: r.infer({0: x})[0], path, precision)
    return peers
