"""The one size function: file on disk, gzip of it, and nonzero parameters x bytes each."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def nonzero_bytes(onnx_path: Path) -> int:
    """Bytes a sparse format would need for the values: nonzero initializer elements x itemsize."""
    import onnx
    from onnx import numpy_helper

    total = 0
    for init in onnx.load(str(onnx_path)).graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype != np.int64:  # int64 initializers are shapes and axes, not parameters
            total += int(np.count_nonzero(values)) * values.dtype.itemsize
    return total


def measure(artifact: Path, onnx_path: Path) -> dict[str, int]:
    """Sizes of the deployable ``artifact``; nonzero parameters come from the ONNX graph it was built from."""
    data = Path(artifact).read_bytes()
    return {
        "size_file_bytes": len(data),
        "size_gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "size_nonzero_bytes": nonzero_bytes(onnx_path),
    }
