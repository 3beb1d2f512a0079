"""runtime=torch: deploys a state dict, and on a GPU matches the CPU."""
import numpy as np
import pytest
import torch

from conftest import build_runtime as _build


def test_torch_deploys_its_state_dict(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    (pt,) = _build("torch", net, onnx_path, workdir).artifacts
    assert set(torch.load(pt, weights_only=True)) == set(net.state_dict())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
def test_torch_on_cuda_matches_cpu(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    x = np.random.default_rng(1).standard_normal((2, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        want = net.cpu()(torch.from_numpy(x)).numpy()
    got = _build("torch", net, onnx_path, workdir, device="cuda")(x)
    net.cpu()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
