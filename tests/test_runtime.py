"""The runtime registry, and what every runtime that runs the ONNX file directly must do alike."""
import numpy as np
import pytest
import torch

from conftest import build_runtime as _build
from lpr_sweep import ConfigError, runtime


def test_torch_and_onnxruntime_agree(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    x = np.random.default_rng(0).standard_normal((3, 3, 24, 94)).astype(np.float32)
    # a runtime with a lowering stage (tvm) runs what it lowers, not the ONNX file: test_compile checks it
    direct = [n for n in runtime.names() if not getattr(runtime.get(n), "lowering", None)]
    outs = {n: _build(n, net, onnx_path, workdir, threads=1)(x) for n in direct}
    assert len(outs) >= 3 and "torch" in outs
    for name, out in outs.items():
        np.testing.assert_allclose(out, outs["torch"], rtol=1e-3, atol=1e-3, err_msg=name)


def test_each_runtime_names_its_deployable_file(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    assert _build("onnxruntime", net, onnx_path, workdir).artifacts == [onnx_path]
    assert _build("openvino", net, onnx_path, workdir).artifacts == [onnx_path]


def test_a_name_cannot_be_registered_twice():
    runtime.get("torch")
    with pytest.raises(ValueError, match="registered twice"):
        runtime.register("torch")(type("Other", (), {}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")
@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_cuda_without_a_gpu_fails_clearly(net_and_onnx, name):
    net, onnx_path, workdir = net_and_onnx
    with pytest.raises(ConfigError, match="hardware=cuda"):
        _build(name, net, onnx_path, workdir, device="cuda")
