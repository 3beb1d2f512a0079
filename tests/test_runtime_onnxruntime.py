"""runtime=onnxruntime: it loads ONNX and nothing else."""
import pytest

from conftest import build_runtime as _build
from lpr_sweep import ConfigError


def test_onnxruntime_refuses_an_openvino_ir(net_and_onnx, tmp_path):
    net, _, workdir = net_and_onnx
    with pytest.raises(ConfigError, match="runtime=onnxruntime cannot load m.xml"):
        _build("onnxruntime", net, tmp_path / "m.xml", workdir)
