import gzip

import numpy as np
import pytest

import torch

from lpr_sweep import export, prune, size
from lpr_sweep.model import LPRNet
from lpr_sweep.prune import PruneConfig


def test_sizes_of_a_dense_and_a_pruned_model(tmp_path):
    torch.manual_seed(0)
    dense = export.to_onnx(LPRNet().eval(), tmp_path / "dense.onnx")
    torch.manual_seed(0)
    sparse = export.to_onnx(prune.run(LPRNet().eval(), PruneConfig(ratio=0.8)), tmp_path / "sparse.onnx")
    d, s = size.measure([dense], size.onnx_tensors(dense)), size.measure([sparse], size.onnx_tensors(sparse))
    assert d["size_file_bytes"] == dense.stat().st_size
    assert d["size_gzip_bytes"] == len(gzip.compress(dense.read_bytes(), compresslevel=9, mtime=0))
    # unstructured zeros leave the dense file as large, but compress and count away
    assert abs(s["size_file_bytes"] - d["size_file_bytes"]) < 1000
    assert s["size_gzip_bytes"] < 0.5 * d["size_gzip_bytes"]
    assert s["size_nonzero_bytes"] < 0.3 * d["size_nonzero_bytes"]
    params = sum(p.numel() for p in LPRNet().parameters())
    assert d["size_nonzero_bytes"] <= params * 4


def test_artifact_and_graph_can_differ(tmp_path):
    torch.manual_seed(0)
    onnx_path = export.to_onnx(LPRNet().eval(), tmp_path / "m.onnx")
    other = tmp_path / "m.pt"
    other.write_bytes(b"0" * 1234)
    sizes = size.measure([other, onnx_path], size.onnx_tensors(onnx_path))
    assert sizes["size_file_bytes"] == 1234 + onnx_path.stat().st_size
    assert sizes["size_nonzero_bytes"] == size.nonzero_bytes(size.onnx_tensors(onnx_path))


def test_nonzero_bytes_agree_across_onnx_openvino_and_torch(tmp_path):
    import openvino as ov

    from lpr_sweep.runtime.openvino import ir_tensors
    from lpr_sweep.runtime.torch import module_tensors

    torch.manual_seed(0)
    net = prune.run(LPRNet().eval(), PruneConfig(ratio=0.6))
    onnx_path = export.to_onnx(net, tmp_path / "m.onnx")
    xml = tmp_path / "m.xml"
    ov.save_model(ov.Core().read_model(onnx_path), str(xml), compress_to_fp16=False)
    from_onnx = size.nonzero_bytes(size.onnx_tensors(onnx_path))
    from_ir, from_torch = size.nonzero_bytes(ir_tensors(xml)), size.nonzero_bytes(module_tensors(net))
    assert from_ir == pytest.approx(from_onnx, rel=0.01)
    # torch keeps BatchNorm separate (and its running stats), the exported graphs fold it into the convs
    assert from_torch > from_onnx


def test_int8_sparsity_counts_zeros_in_int8_conv_weights():
    w = np.zeros((4, 2, 1, 1), np.int8)
    w[0] = 3
    assert size.int8_sparsity([w, np.ones((4, 2, 1, 1), np.float32), np.zeros(5, np.int8)]) == 0.75


def test_macs_come_from_the_graph_and_match_a_forward_count(tmp_path):
    from lpr_sweep.model import LPRNet

    net = LPRNet().eval()
    counted = []
    hooks = [m.register_forward_hook(lambda m, a, out: counted.append(out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    net(torch.zeros(1, 3, 24, 94))
    for h in hooks:
        h.remove()
    assert size.macs(export.to_onnx(net, tmp_path / "m.onnx")) == sum(counted) == 144_411_264  # docs/measured.md: 0.15 GMAC
