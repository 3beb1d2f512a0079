"""The hand-built peers (lpr_sweep.peers): a plain export, as a user would make it, reads plates like the project's model."""
import numpy as np
import onnx
import pytest

from lpr_sweep import data, evaluate, peers

pytestmark = pytest.mark.slow


def test_the_peers_are_plain_and_read_the_plates_like_the_reference(real_root, tmp_path):
    _, calib, _, scored = data.load(data.DataConfig(root=str(real_root)))
    built = peers.build(real_root / "weights" / "Final_LPRNet_model.pth", calib.images[:20], 1, tmp_path)
    assert list(built) == list(peers.NAMES)
    graph = onnx.load(str(built[peers.PLAIN_ORT].path)).graph
    assert "Slice" in {n.op_type for n in graph.node}  # upstream's channel stride, untouched
    weights = np.concatenate([onnx.numpy_helper.to_array(t).ravel() for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT])
    assert ((np.abs(weights) < np.finfo(np.float32).tiny) & (weights != 0)).any()  # its denormals, not flushed
    assert built[peers.PLAIN_NNCF].path.suffix == ".xml" and built[peers.PLAIN_OV].precision in ("f32", "bf16")
    plates = data.Plates(scored.files[:100], scored.labels[:100], scored.images[:100])
    ort_acc = evaluate.run(built[peers.PLAIN_ORT], plates, evaluate.EvaluateConfig()).accuracy
    assert ort_acc >= 0.85 and evaluate.run(built[peers.PLAIN_NNCF], plates, evaluate.EvaluateConfig()).accuracy >= ort_acc - 0.05
