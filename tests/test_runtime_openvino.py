"""runtime=openvino: an NNCF IR is deployed as its .xml and .bin."""
import numpy as np

from conftest import build_runtime as _build


def test_openvino_reads_an_ir_and_deploys_xml_and_bin(net_and_onnx):
    import openvino as ov

    net, onnx_path, workdir = net_and_onnx
    xml = workdir / "m.xml"
    ov.save_model(ov.Core().read_model(onnx_path), str(xml), compress_to_fp16=False)
    rt = _build("openvino", net, xml, workdir)
    assert rt.artifacts == [xml, xml.with_suffix(".bin")]
    x = np.zeros((2, 3, 24, 94), np.float32)
    np.testing.assert_allclose(rt(x), _build("onnxruntime", net, onnx_path, workdir)(x), rtol=1e-3, atol=1e-3)


def test_openvino_leaves_its_threads_unpinned(net_and_onnx):
    # pinned, its speed against the unpinned reference varied twice as much between processes
    net, onnx_path, workdir = net_and_onnx
    rt = _build("openvino", net, onnx_path, workdir)
    assert rt.request.get_compiled_model().get_property("ENABLE_CPU_PINNING") is False
