"""The stage currency: a model as one file in one format, with the PyTorch module it came from.

Every stage after pruning takes and returns a ``ModelFile``: export writes ONNX, a quant backend
writes int8 ONNX (QDQ), an OpenVINO IR or a compiled torch program, and a lowering step (TVM's
compile stage) writes a library. A runtime loads ``path`` (or runs ``module``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn


@dataclass
class ModelFile:
    module: nn.Module  # the PyTorch model (fp32, pruned, or the int8 module of quant=torch_x86)
    path: Path  # the file a runtime loads: ONNX (fp32 or int8 QDQ), OpenVINO IR (.xml), a TVM library (.so)
    artifact: Path | None = None  # a deployable file a stage already wrote for runtime=torch
    source: Path | None = None  # the graph file this one was lowered from (a TVM library's ONNX)

    @property
    def format(self) -> str:
        """The file's format, by suffix: onnx, xml (OpenVINO IR), so (TVM library)."""
        return self.path.suffix.lstrip(".")
