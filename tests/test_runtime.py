import numpy as np
import pytest
import torch

from lpr_sweep import ConfigError, export, runtime
from lpr_sweep.hardware import HardwareConfig
from lpr_sweep.model import LPRNet


@pytest.fixture(scope="module")
def net_and_onnx(tmp_path_factory):
    torch.manual_seed(0)
    net = LPRNet().eval()
    workdir = tmp_path_factory.mktemp("rt")
    return net, export.to_onnx(net, workdir / "m.onnx"), workdir


def test_torch_and_onnxruntime_agree(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    hw = HardwareConfig(threads=1)
    x = np.random.default_rng(0).standard_normal((3, 3, 24, 94)).astype(np.float32)
    outs = {n: runtime.build(n, model=net, onnx_path=onnx_path, hardware=hw, workdir=workdir)(x) for n in ("torch", "onnxruntime")}
    np.testing.assert_allclose(outs["torch"], outs["onnxruntime"], rtol=1e-3, atol=1e-3)


def test_each_runtime_names_its_deployable_file(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    hw = HardwareConfig(threads=1)
    assert runtime.build("onnxruntime", model=net, onnx_path=onnx_path, hardware=hw, workdir=workdir).artifact == onnx_path
    pt = runtime.build("torch", model=net, onnx_path=onnx_path, hardware=hw, workdir=workdir).artifact
    assert set(torch.load(pt, weights_only=True)) == set(net.state_dict())


def test_unknown_runtime_lists_the_choices(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    with pytest.raises(ConfigError, match=r"runtime='tensorrt' is unknown; choose one of \['onnxruntime', 'torch'"):
        runtime.build("tensorrt", model=net, onnx_path=onnx_path, hardware=HardwareConfig(), workdir=workdir)


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        runtime.register("torch")(object)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")
@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_cuda_without_a_gpu_fails_clearly(net_and_onnx, name):
    net, onnx_path, workdir = net_and_onnx
    with pytest.raises(ConfigError, match="hardware=cuda"):
        runtime.build(name, model=net, onnx_path=onnx_path, hardware=HardwareConfig(device="cuda"), workdir=workdir)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
def test_torch_on_cuda_matches_cpu(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    x = np.random.default_rng(1).standard_normal((2, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        want = net.cpu()(torch.from_numpy(x)).numpy()
    got = runtime.build("torch", model=net, onnx_path=onnx_path, hardware=HardwareConfig(device="cuda"), workdir=workdir)(x)
    net.cpu()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
