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
    assert rt.requests[1].get_compiled_model().get_property("ENABLE_CPU_PINNING") is False


def test_openvino_compiles_each_batch_size_static_and_keeps_a_few(net_and_onnx):
    from lpr_sweep.runtime import openvino

    net, onnx_path, workdir = net_and_onnx
    rt = _build("openvino", net, onnx_path, workdir)
    ort = _build("onnxruntime", net, onnx_path, workdir)
    assert rt.requests[1].get_compiled_model().input(0).get_partial_shape().is_static  # batch 1, compiled at load
    rng = np.random.default_rng(0)
    for n in (1, 3, 1, 5, 7, 2, 9, 3):
        x = rng.standard_normal((n, 3, 24, 94)).astype(np.float32)
        np.testing.assert_allclose(rt(x), ort(x), rtol=1e-3, atol=1e-3)
        assert list(rt.requests[n].get_compiled_model().input(0).get_shape()) == [n, 3, 24, 94]
    assert 1 in rt.requests and len(rt.requests) <= openvino.MAX_SHAPES + 1
    out = rt(x[:1])
    rt(x[1:2])  # the request's output buffer is overwritten by the next call: what was returned must not change
    np.testing.assert_allclose(out, ort(x[:1]), rtol=1e-3, atol=1e-3)
