"""PyTorch -> ONNX, with a dynamic batch axis so one file serves latency (bs1) and throughput."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from lpr_sweep.model import INPUT_HW

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
    return path
