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


def _build(name, net, onnx_path, workdir, **hw):
    return runtime.build(name, runtime.Prepared(net, onnx_path), HardwareConfig(**hw), workdir)


def test_torch_and_onnxruntime_agree(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    x = np.random.default_rng(0).standard_normal((3, 3, 24, 94)).astype(np.float32)
    # tvm runs a compiled library, not the ONNX file: test_compile checks it against ORT
    outs = {n: _build(n, net, onnx_path, workdir, threads=1)(x) for n in runtime.names() if n != "tvm"}
    assert set(outs) == {"torch", "onnxruntime", "openvino"}
    for name, out in outs.items():
        np.testing.assert_allclose(out, outs["torch"], rtol=1e-3, atol=1e-3, err_msg=name)


def test_each_runtime_names_its_deployable_file(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    assert _build("onnxruntime", net, onnx_path, workdir).artifacts == [onnx_path]
    assert _build("openvino", net, onnx_path, workdir).artifacts == [onnx_path]
    (pt,) = _build("torch", net, onnx_path, workdir).artifacts
    assert set(torch.load(pt, weights_only=True)) == set(net.state_dict())


def test_unknown_runtime_lists_the_choices(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    with pytest.raises(ConfigError, match=r"runtime='tensorrt' is unknown; choose one of \['onnxruntime', 'openvino', 'torch', 'tvm'\]"):
        _build("tensorrt", net, onnx_path, workdir)


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        runtime.register("torch")(object)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error; this machine has a GPU")
@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_cuda_without_a_gpu_fails_clearly(net_and_onnx, name):
    net, onnx_path, workdir = net_and_onnx
    with pytest.raises(ConfigError, match="hardware=cuda"):
        _build(name, net, onnx_path, workdir, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")
def test_torch_on_cuda_matches_cpu(net_and_onnx):
    net, onnx_path, workdir = net_and_onnx
    x = np.random.default_rng(1).standard_normal((2, 3, 24, 94)).astype(np.float32)
    with torch.no_grad():
        want = net.cpu()(torch.from_numpy(x)).numpy()
    got = _build("torch", net, onnx_path, workdir, device="cuda")(x)
    net.cpu()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_openvino_reads_an_ir_and_deploys_xml_and_bin(net_and_onnx):
    import openvino as ov

    net, onnx_path, workdir = net_and_onnx
    xml = workdir / "m.xml"
    ov.save_model(ov.Core().read_model(onnx_path), str(xml), compress_to_fp16=False)
    rt = _build("openvino", net, xml, workdir)
    assert rt.artifacts == [xml, xml.with_suffix(".bin")]
    x = np.zeros((2, 3, 24, 94), np.float32)
    np.testing.assert_allclose(rt(x), _build("onnxruntime", net, onnx_path, workdir)(x), rtol=1e-3, atol=1e-3)


def test_onnxruntime_refuses_an_openvino_ir(net_and_onnx, tmp_path):
    net, _, workdir = net_and_onnx
    with pytest.raises(ConfigError, match="runtime=onnxruntime cannot load m.xml"):
        _build("onnxruntime", net, tmp_path / "m.xml", workdir)
