"""runtime=torch: deploys a state dict, and on a GPU matches the CPU."""
import numpy as np
import pytest
import torch

from conftest import build_runtime as _build


def test_torch_deploys_a_program_that_loads_back_alone(net_and_onnx):
    from lpr_sweep import runtime
    from lpr_sweep.hardware import HardwareConfig
    from lpr_sweep.model_file import ModelFile

    net, onnx_path, workdir = net_and_onnx
    (pt2,) = _build("torch", net, onnx_path, workdir).artifacts
    again = runtime.build("torch", ModelFile(None, pt2, artifact=pt2), HardwareConfig(threads=1), workdir)
    x = np.random.default_rng(2).standard_normal((3, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(again(x), net(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
def test_torch_on_cuda_matches_cpu(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    x = np.random.default_rng(1).standard_normal((2, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        want = net.cpu()(torch.from_numpy(x)).numpy()
    got = _build("torch", net, onnx_path, workdir, device="cuda")(x)
    net.cpu()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
