"""ONNX Runtime ``quantize_static``: QDQ format, per-channel int8 weights, uint8 activations.

Its QDQ graph runs on onnxruntime and openvino; TVM imports it as quantize/dequantize around fp32
convs, so it runs there too, without int8 kernels.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from lpr_sweep.model_file import ModelFile
from lpr_sweep.quant import CALIB_BATCH, Backend, QuantConfig, register


def _onnx_conv_nodes(path: Path, layers: list[str]) -> list[str]:
    import onnx

    weights = {f"{layer}.weight": layer for layer in layers}
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv" and n.input[1] in weights]


def quantize(fp32: ModelFile, calib: np.ndarray, method: str, keep: list[str], cfg: QuantConfig, out: Path) -> ModelFile:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    logging.getLogger("onnxruntime.quantization.shape_inference").setLevel(logging.WARNING)  # INFO per call

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calib[i : i + CALIB_BATCH] for i in range(0, len(calib), CALIB_BATCH))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    # Shape inference and graph clean-up first, as ORT's quantizer recommends; node names survive it.
    pre = out / "model_pre.onnx"
    quant_pre_process(fp32.path, pre)
    path = out / "model_int8.onnx"
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print a banner per call
        quantize_static(
            str(pre), str(path), Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate,
            nodes_to_exclude=_onnx_conv_nodes(pre, keep),
        )
    return ModelFile(fp32.module, path)




register(Backend("ort_static", methods=("percentile", "minmax", "entropy"), runtimes=("onnxruntime", "openvino", "tvm"),
                 quantize=quantize, packages=("onnxruntime", "onnx")))
