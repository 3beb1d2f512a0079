"""The one size function: files on disk, gzip of them, nonzero parameters x bytes each; and MACs per plate."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator

import numpy as np
from torch import nn


def _onnx_tensors(path: Path) -> Iterator[np.ndarray]:
    import onnx
    from onnx import numpy_helper

    for init in onnx.load(str(path)).graph.initializer:
        yield numpy_helper.to_array(init)


def _openvino_tensors(path: Path) -> Iterator[np.ndarray]:
    import openvino as ov

    for op in ov.Core().read_model(path).get_ops():
        if op.get_type_name() == "Constant":
            yield op.get_data()


def _torch_tensors(module: nn.Module) -> Iterator[np.ndarray]:
    """State dict, plus the constants an exported/quantized GraphModule keeps as plain attributes."""
    import torch

    module = getattr(module, "_orig_mod", module)  # torch.compile wraps the module it compiles
    seen = {id(t): t for t in module.state_dict().values()}
    for node in getattr(getattr(module, "graph", None), "nodes", ()):
        if node.op == "get_attr":
            value = module
            for part in node.target.split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                seen.setdefault(id(value), value)
    for t in seen.values():
        yield (t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().numpy()


def tensors(graph: Path | nn.Module) -> Iterator[np.ndarray]:
    """The constant tensors of an ONNX file, an OpenVINO IR (.xml) or a PyTorch module."""
    if isinstance(graph, nn.Module):
        return _torch_tensors(graph)
    if Path(graph).suffix == ".xml":
        return _openvino_tensors(Path(graph))
    return _onnx_tensors(Path(graph))


def nonzero_bytes(graph: Path | nn.Module) -> int:
    """Bytes a sparse format would need for the values: nonzero parameter elements x itemsize."""
    # int64 tensors are shapes, axes and indices, not parameters.
    return sum(int(np.count_nonzero(t)) * t.dtype.itemsize for t in tensors(graph) if t.dtype != np.int64)


def int8_sparsity(graph: Path | nn.Module) -> float:
    """Fraction of zeros among the 4-D int8 tensors (the conv weights) of an int8 graph."""
    return int8_sparsity_of(tensors(graph))


def int8_sparsity_of(arrays) -> float:
    weights = [t for t in arrays if t.dtype == np.int8 and t.ndim == 4]
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


def measure(artifacts: list[Path], graph: Path | nn.Module) -> dict[str, int]:
    """Sizes of the deployable files; nonzero parameters come from the graph the runtime runs."""
    data = b"".join(Path(a).read_bytes() for a in artifacts)
    return {
        "size_file_bytes": len(data),
        "size_gzip_bytes": len(gzip.compress(data, compresslevel=9, mtime=0)),
        "size_nonzero_bytes": nonzero_bytes(graph),
    }
