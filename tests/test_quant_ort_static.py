"""quant=ort_static: keep_float leaves exactly that conv in float."""
from lpr_sweep.quant import QuantConfig, backend_of


def test_keep_float_leaves_that_conv_unquantized(pruned_onnx, tmp_path):
    import onnx

    fp32, calib, _ = pruned_onnx
    int8 = backend_of(QuantConfig(backend="ort_static")).quantize(fp32, calib, "minmax", ["container.0"], QuantConfig(backend="ort_static"), tmp_path)
    graph = onnx.load(str(int8.path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = {n.input[1]: n for n in graph.node if n.op_type == "Conv"}
    weight_of = {name: producers.get(name) for name in convs}
    float_weights = [w for w, p in weight_of.items() if p is None or p.op_type != "DequantizeLinear"]
    assert float_weights == ["container.0.weight"]
