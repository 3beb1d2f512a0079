"""Int8 post-training quantization with an accuracy guard.

Backends (``quant`` config group):
- ``ort_static``: ONNX Runtime ``quantize_static``, QDQ format, per-channel int8 weights, uint8
  activations; runs on onnxruntime or openvino.
- ``nncf``: NNCF post-training quantization of the OpenVINO model; runs on openvino.
- ``torch_x86``: torchao's PT2E flow (``torch.export`` -> ``prepare_pt2e`` with
  ``X86InductorQuantizer`` -> calibrate -> ``convert_pt2e`` -> ``torch.compile``); runs on torch.
  It replaces ``torch.ao.quantization`` FX, which torch 2.13 deprecates.

The guard: when a candidate loses more than ``max_drop`` points against this trial's fp32 model on
the scored plates, try the backend's other calibration methods, then keep the most sensitive convs
in float one more at a time. Sensitivity is measured on the calibration plates (never the scored
ones): for each conv, how much the logit error against fp32 falls when only that conv stays float.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lpr_sweep import ConfigError, evaluate
from lpr_sweep.data import Plates
from lpr_sweep.runtime import Prepared, Runtime

log = logging.getLogger(__name__)

# Calibration methods per backend, the default first (each default was the most accurate we measured).
METHODS = {
    "ort_static": ("percentile", "minmax", "entropy"),
    "nncf": ("default", "minmax", "percentile"),
    "torch_x86": ("histogram", "minmax"),
}
# TVM imports ORT's QDQ graph as quantize/dequantize around fp32 convs: it runs, without int8 kernels.
RUNTIMES = {"ort_static": ("onnxruntime", "openvino", "tvm"), "nncf": ("openvino",), "torch_x86": ("torch",)}
CALIB_BATCH = 10


@dataclass
class QuantConfig:
    backend: str = "none"  # none | ort_static | nncf | torch_x86
    method: str = "default"  # calibration method; default = the backend's first in METHODS
    calib_size: int = 100  # plates taken from the calibration split
    keep_float: list[str] = field(default_factory=list)  # conv module names kept float, e.g. [backbone.20]
    max_drop: float = 1.0  # accuracy points allowed against this trial's fp32 model
    max_float_layers: int = 3  # how many sensitive convs the guard may keep in float
    compile: bool = True  # torch_x86: torch.compile the int8 module, which is what makes it fast

    def __post_init__(self):
        if self.backend != "none" and self.backend not in METHODS:
            raise ConfigError(f"quant={self.backend!r} is unknown; choose none, {', '.join(METHODS)}")
        if self.backend in METHODS and self.method not in ("default", *METHODS[self.backend]):
            raise ConfigError(
                f"quant.method={self.method!r} is not a calibration method of quant={self.backend}; "
                f"use one of {METHODS[self.backend]}"
            )
        if self.calib_size < 1:
            raise ConfigError(f"quant.calib_size={self.calib_size} must be >= 1")
        if self.max_drop < 0 or self.max_float_layers < 0:
            raise ConfigError("quant.max_drop and quant.max_float_layers must be >= 0")

    def methods(self) -> list[str]:
        """The configured method first, then the backend's others: the guard's order."""
        own = METHODS[self.backend]
        first = own[0] if self.method == "default" else self.method
        return [first] + [m for m in own if m != first]


def check_pairing(cfg: QuantConfig, runtime_name: str, calib_split: int) -> None:
    """Cross-group checks, run when the config is validated."""
    if cfg.backend == "none":
        return
    if runtime_name not in RUNTIMES[cfg.backend]:
        raise ConfigError(
            f"quant={cfg.backend} cannot run on runtime={runtime_name}; use runtime={RUNTIMES[cfg.backend][0]}"
        )
    if cfg.calib_size > calib_split:
        raise ConfigError(
            f"quant.calib_size={cfg.calib_size} exceeds the calibration split (data.calib_size={calib_split}); "
            "lower quant.calib_size or raise data.calib_size"
        )


# --- backends: (fp32 model, calibration images, method, convs kept float, config, folder) -> int8 model


def _onnx_conv_nodes(path: Path, layers: list[str]) -> list[str]:
    import onnx

    weights = {f"{layer}.weight": layer for layer in layers}
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv" and n.input[1] in weights]


def _ort_static(fp32: Prepared, calib: np.ndarray, method: str, keep: list[str], cfg: QuantConfig, out: Path) -> Prepared:
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
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
    return Prepared(fp32.module, path)


def _nncf(fp32: Prepared, calib: np.ndarray, method: str, keep: list[str], cfg: QuantConfig, out: Path) -> Prepared:
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
    return Prepared(fp32.module, path)


def _torch_x86(fp32: Prepared, calib: np.ndarray, method: str, keep: list[str], cfg: QuantConfig, out: Path) -> Prepared:
    import warnings

    import torch

    # A CPU-only install cannot load torchao's CUDA kernels; it says so once per import, harmlessly.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torchao.kernel.intmm").setLevel(logging.ERROR)
    # torchao 0.18 registers an Enum as a pytree constant at import, which torch 2.13 logs as
    # deprecated; nothing we call is deprecated, and the flow itself is the supported PT2E one.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    example = torch.from_numpy(calib[:2])
    dynamic = {"x": {0: torch.export.Dim("batch", min=1)}}
    graph = torch.export.export(fp32.module, (example,), dynamic_shapes=dynamic).module()
    qconfig = xiq.get_default_x86_inductor_quantization_config()
    if method == "minmax":
        act = qconfig.input_activation
        act = type(act)(**{**act.__dict__, "observer_or_fake_quant_ctr": MinMaxObserver.with_args(eps=2**-12)})
        qconfig = type(qconfig)(act, act, qconfig.weight, qconfig.bias, qconfig.is_qat)
    quantizer = xiq.X86InductorQuantizer().set_global(qconfig)
    for name in keep:
        quantizer.set_module_name_qconfig(name, None)
    with warnings.catch_warnings():
        # LPRNet's max-pools follow un-quantized ops by design; the quantizer warns about each one.
        warnings.filterwarnings("ignore", message="The input of maxpool2d is not quantized")
        graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for i in range(0, len(calib), CALIB_BATCH):
            graph(torch.from_numpy(calib[i : i + CALIB_BATCH]))
    graph = convert_pt2e(graph)
    artifact = out / "model_int8.pt2"
    torch.export.save(torch.export.export(graph, (example,), dynamic_shapes=dynamic), str(artifact))
    module = torch.compile(graph, dynamic=True) if cfg.compile else graph
    return Prepared(module, fp32.path, artifact)


BACKENDS: dict[str, Callable[..., Prepared]] = {"ort_static": _ort_static, "nncf": _nncf, "torch_x86": _torch_x86}


# --- the guard


@dataclass
class Guard:
    """What the guard tried and chose; ``rows`` becomes the candidates artifact."""

    chosen: Prepared
    row: dict  # the chosen candidate's row
    met: bool
    rows: list[dict] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)


def sensitivity(quantize: Callable[[str, list[str]], Prepared], build: Callable[[Prepared], Runtime],
                fp32: Prepared, calib: np.ndarray, method: str, layers: list[str], keep: list[str]) -> list[tuple[str, float]]:
    """(conv, logit MSE against fp32 with that conv kept float), least error first."""
    reference = build(fp32)(calib)
    errors = []
    for layer in layers:
        if layer in keep:
            continue
        logits = build(quantize(method, [*keep, layer]))(calib)
        errors.append((layer, float(np.mean((logits - reference) ** 2))))
    return sorted(errors, key=lambda e: e[1])


def run(fp32: Prepared, calib: Plates, scored: Plates, cfg: QuantConfig, *, build: Callable[[Prepared], Runtime],
        fp32_accuracy: float, layers: list[str], workdir: Path, score_cfg: evaluate.EvaluateConfig) -> Guard:
    unknown = sorted(set(cfg.keep_float) - set(layers))
    if unknown:
        raise ConfigError(f"quant.keep_float names {unknown}, which are not convs of this model; use names like {layers[-1]}")
    images = calib.images[: cfg.calib_size]
    folders = (workdir / f"candidate_{i}" for i in range(10**6))

    def quantize(method: str, keep: list[str], backend_cfg: QuantConfig = cfg) -> Prepared:
        out = next(folders)
        out.mkdir(parents=True, exist_ok=True)
        return BACKENDS[cfg.backend](fp32, images, method, keep, backend_cfg, out)

    rows: list[dict] = []
    best: Guard | None = None

    def attempt(method: str, keep: list[str]) -> Guard | None:
        """Score one candidate; a Guard when it meets the guard."""
        nonlocal best
        t0 = time.perf_counter()
        candidate = quantize(method, keep)
        accuracy = evaluate.run(build(candidate), scored, score_cfg).accuracy
        drop = 100 * (fp32_accuracy - accuracy)
        rows.append({"step": len(rows), "method": method, "keep_float": " ".join(keep) or "-", "accuracy": accuracy,
                     "drop_pts": drop, "meets_guard": drop <= cfg.max_drop, "seconds": time.perf_counter() - t0})
        log.info("quant %s/%s keep_float=%s: accuracy %.4f, drop %.2f pts", cfg.backend, method, keep or "-", accuracy, drop)
        if best is None or accuracy > best.row["accuracy"]:
            best = Guard(candidate, rows[-1], False, rows)
        return Guard(candidate, rows[-1], True, rows) if drop <= cfg.max_drop else None

    for method in cfg.methods():
        if found := attempt(method, list(cfg.keep_float)):
            return found
    ranked: list[tuple[str, float]] = []
    if cfg.max_float_layers:
        method = max(rows, key=lambda r: r["accuracy"])["method"]
        plain = QuantConfig(**{**cfg.__dict__, "compile": False})  # ranking needs no fast kernels
        ranked = sensitivity(lambda m, k: quantize(m, k, plain), build, fp32, images, method, layers, list(cfg.keep_float))
        keep = list(cfg.keep_float)
        for layer, _ in ranked[: cfg.max_float_layers]:
            keep.append(layer)
            if found := attempt(method, keep):
                found.sensitivity = ranked
                return found
    best.sensitivity = ranked
    return best

