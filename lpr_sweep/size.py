"""The one size function: files on disk, gzip of them, nonzero parameters x bytes each; and MACs per plate."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np


def onnx_tensors(path: Path) -> Iterator[np.ndarray]:
    """The initializers of an ONNX file (ONNX Runtime's and TVM's constants)."""
    import onnx
    from onnx import numpy_helper

    for init in onnx.load(str(path)).graph.initializer:
        yield numpy_helper.to_array(init)


def nonzero_bytes(constants: Iterable[np.ndarray]) -> int:
    """Bytes a sparse format would need for the values: nonzero parameter elements x itemsize."""
    # int64 tensors are shapes, axes and indices, not parameters.
    return sum(int(np.count_nonzero(t)) * t.dtype.itemsize for t in constants if t.dtype != np.int64)


def int8_sparsity(constants: Iterable[np.ndarray]) -> float:
    """Fraction of zeros among the 4-D int8 tensors (the conv weights) of an int8 graph."""
    weights = [t for t in constants if t.dtype == np.int8 and t.ndim == 4]
    total = sum(t.size for t in weights)
    return float(sum(t.size - np.count_nonzero(t) for t in weights) / total) if total else 0.0


def macs(onnx_path: Path) -> int:
    """Multiply-accumulates of one plate through the graph's convolutions, from ONNX shape inference."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output]
    }
    total = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        _, c_in, kh, kw = weights[node.input[1]]  # c_in is already per group
        _, c_out, h, w = shapes[node.output[0]]  # the batch axis is symbolic: one plate
        total += c_out * h * w * c_in * kh * kw
    return total


def measure(artifacts: list[Path], constants: Iterable[np.ndarray]) -> dict[str, int]:
    """Sizes of the deployable files; nonzero parameters come from the constants the runtime runs."""
    data = b"".join(Path(a).read_bytes() for a in artifacts)
    return {
        "size_file_bytes": len(data),
        "size_gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "size_nonzero_bytes": nonzero_bytes(constants),
    }
