from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from lpr_sweep import export, prune
from lpr_sweep.model import LPRNet
from lpr_sweep.prune import PruneConfig


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = prune.run(LPRNet().eval(), PruneConfig(ratio=0.5))
    return net, export.to_onnx(net, tmp_path_factory.mktemp("onnx") / "m.onnx")


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_torch_at_any_batch(exported, batch):
    net, path = exported
    x = np.random.default_rng(batch).standard_normal((batch, 3, 24, 94)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {export.INPUT_NAME: x})[0]
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_onnx_is_one_checked_file_with_no_3d_pool(exported):
    _, path = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert not list(path.parent.glob("*.data"))
    assert "MaxPool" in {n.op_type for n in model.graph.node}
    assert all(len(a.ints) <= 2 for n in model.graph.node if n.op_type == "MaxPool" for a in n.attribute if a.name == "kernel_shape")


def test_denormal_weights_are_flushed_and_nothing_else_changes(tmp_path):
    import onnx
    from onnx import numpy_helper

    torch.manual_seed(0)
    net = LPRNet().eval()
    with torch.no_grad():
        net.container[0].weight.view(-1)[:3] = torch.tensor([1e-40, -3e-39, 2e-38])  # two denormal, one normal
    path = export.to_onnx(net, tmp_path / "m.onnx")
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    flat = weights["container.0.weight"].ravel()
    assert list(flat[:3]) == [0.0, 0.0, np.float32(2e-38)]
    tiny = np.finfo(np.float32).tiny
    assert not any(((np.abs(w) < tiny) & (w != 0)).any() for w in weights.values() if w.dtype == np.float32)
    assert export.flush_denormals(path) == 0  # nothing left to flush


def test_the_exported_file_carries_no_source_paths_and_its_size_does_not_depend_on_them(tmp_path):
    torch.manual_seed(0)
    net = LPRNet().eval()
    path = export.to_onnx(net, tmp_path / "m.onnx")
    raw = path.read_bytes()
    assert b"stack_trace" not in raw and str(Path(export.__file__).parent).encode() not in raw
    assert not any(n.metadata_props or n.doc_string for n in onnx.load(str(path)).graph.node)
