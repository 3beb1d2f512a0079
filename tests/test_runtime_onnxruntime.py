"""runtime=onnxruntime: it loads ONNX and nothing else."""
import pytest

from conftest import build_runtime as _build
from lpr_sweep import ConfigError


def test_onnxruntime_refuses_an_openvino_ir(net_and_onnx, tmp_path):
    net, _, workdir = net_and_onnx
    with pytest.raises(ConfigError, match="runtime=onnxruntime cannot load m.xml"):
        _build("onnxruntime", net, tmp_path / "m.xml", workdir)


def test_onnxruntime_stops_its_threads_spinning_after_each_run(net_and_onnx):
    # the paired benchmark times several sessions in one process: idle spinning would slow the next
    net, onnx_path, workdir = net_and_onnx
    opts = _build("onnxruntime", net, onnx_path, workdir).session.get_session_options()
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
