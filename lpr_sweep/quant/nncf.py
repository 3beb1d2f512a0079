"""NNCF post-training quantization of the OpenVINO model; its IR runs on openvino."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from lpr_sweep.model_file import ModelFile
from lpr_sweep.quant import Backend, QuantConfig, register


def quantize(fp32: ModelFile, calib: np.ndarray, method: str, keep: list[str], cfg: QuantConfig, out: Path) -> ModelFile:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = ov.Core().read_model(fp32.path)
    weights = {f"{layer}.weight" for layer in keep}
    ignored = [
        op.get_friendly_name() for op in model.get_ops()
        if op.get_type_name() == "Convolution" and op.input_value(1).get_node().get_friendly_name() in weights
    ]
    estimators = {"minmax": RangeEstimatorParametersSet.MINMAX, "percentile": RangeEstimatorParametersSet.MEAN_QUANTILE}
    advanced = AdvancedQuantizationParameters(activations_range_estimator_params=estimators[method]) if method in estimators else None
    with contextlib.redirect_stdout(io.StringIO()):  # a progress bar per call, on stdout
        quantized = nncf.quantize(
            model,
            nncf.Dataset([calib[i : i + 1] for i in range(len(calib))]),
            subset_size=len(calib),
            ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None,
            advanced_parameters=advanced,
        )
    path = out / "model_int8.xml"
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return ModelFile(fp32.module, path)




register(Backend("nncf", methods=("default", "minmax", "percentile"), runtimes=("openvino",), quantize=quantize,
                 packages=("nncf", "openvino")))
