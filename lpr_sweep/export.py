"""PyTorch -> ONNX, with a dynamic batch axis so one file serves latency (bs1) and throughput.

The exported weights are flushed of denormal values (nonzero, below float32's smallest normal,
1.2e-38). Folding BatchNorm into LPRNet's convs leaves 188 of them; on the development CPU they made
ONNX Runtime 2.8x slower (paired, 95 % interval [2.68, 2.92]) while changing no logit at all
(docs/measured.md, "Runtimes"). A product with such a weight is itself below float32's precision.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lpr_sweep.model import INPUT_HW

log = logging.getLogger(__name__)
OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def to_onnx(model: nn.Module, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for noisy in ("onnxscript", "onnx_ir"):  # they log every rewrite rule at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # It warns once per torchvision op it cannot register; LPRNet uses none of them.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    example = torch.zeros(2, 3, *INPUT_HW)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export's own pytree deprecations
        torch.onnx.export(
            model.eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
            external_data=False,  # one self-contained file is the deployable artifact
            verbose=False,
        )
    strip_provenance(path)
    flushed = flush_denormals(path)
    if flushed:
        log.info("export: %d denormal weights flushed to zero", flushed)
    return path


def strip_provenance(path: Path) -> None:
    """Drop what torch.onnx.export records per node (Python stack traces with this checkout's paths,
    FX names, rewrite rules) and the doc strings: a deployable should not carry the build machine's
    paths, and its size should not depend on where the repository sits (two checkouts gave files
    264 bytes apart). Graph, weights and names are untouched."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    model.graph.doc_string = model.doc_string = ""
    onnx.save(model, str(path))


def flush_denormals(path: Path) -> int:
    """Zero every denormal float32 initializer value in place; how many there were."""
    import onnx
    from onnx import numpy_helper

    model, count = onnx.load(str(path)), 0
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype != np.float32:
            continue
        tiny = (np.abs(values) < np.finfo(np.float32).tiny) & (values != 0)
        if tiny.any():
            count += int(tiny.sum())
            init.CopyFrom(numpy_helper.from_array(np.where(tiny, np.float32(0), values), init.name))
    if count:
        onnx.save(model, str(path))
    return count
