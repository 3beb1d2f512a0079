"""Structured channel surgery (lpr_sweep.prune.channels): rebuilt, padded and sliced models keep the logits."""
import pytest
import torch

from lpr_sweep import ConfigError, prune
from lpr_sweep.model import ChannelStridePool, LPRNet
from lpr_sweep.prune import PruneConfig, Scope, channels


def _net():
    torch.manual_seed(0)
    return LPRNet().eval()


# Structured removal: the rebuilt model must compute the masked model's logits.

def _real(real_root, norm="sample"):
    from lpr_sweep import model as lprnet

    return lprnet.load(real_root / "weights" / "Final_LPRNet_model.pth", norm)


def _plates(real_root, n=64):
    from lpr_sweep import data

    _, _, _, scored = data.load(data.DataConfig(root=str(real_root)))
    return torch.from_numpy(scored.images[:n])


def _rebuilt(net, ratio, scope="global"):
    import copy

    masked = prune.run(copy.deepcopy(net), PruneConfig(ratio=ratio, scope=Scope[scope]))
    rebuilt = copy.deepcopy(masked)
    report = channels.remove_dead_channels(rebuilt)
    return masked, rebuilt, report


def _assert_same_logits(a, b, x):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-4 * float(ya.abs().max()))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["sample", "batch"])
@pytest.mark.parametrize("ratio, scope", [(0.0, "global"), (0.5, "layer"), (0.5, "global"), (0.8, "global"), (0.95, "global"), (0.99, "global")])
def test_rebuilt_model_equals_the_masked_model(real_root, ratio, scope, norm):
    masked, rebuilt, report = _rebuilt(_real(real_root, norm), ratio, scope)
    removed = sum(before - after for before, after in report.values())
    if ratio == 0.0:
        assert removed == 0 and prune.params_dense(rebuilt) == prune.params_dense(masked)
    if ratio >= 0.8:  # global pruning kills whole channels (docs/measured.md)
        assert removed > 500 and prune.params_dense(rebuilt) < 0.25 * prune.params_dense(masked)
    torch.manual_seed(1)
    _assert_same_logits(masked, rebuilt, torch.randn(8, 3, 24, 94))
    _assert_same_logits(masked, rebuilt, _plates(real_root))


@pytest.mark.slow
def test_rebuilt_model_predicts_like_the_masked_one_and_keeps_the_original_subsampled_channels(real_root):
    from lpr_sweep import evaluate

    masked, rebuilt, _ = _rebuilt(_real(real_root), 0.8)
    x = _plates(real_root, 200)
    with torch.no_grad():
        assert evaluate.decode(masked(x).numpy()) == evaluate.decode(rebuilt(x).numpy())
    pool = rebuilt.backbone[7]
    assert pool.channels is not None and len(pool.channels) == rebuilt.backbone[8].block[0].in_channels


def test_a_second_pass_finds_nothing_more(real_root):
    _, rebuilt, _ = _rebuilt(_real(real_root), 0.9)
    assert all(before == after for before, after in channels.remove_dead_channels(rebuilt).values())


def test_rebuilt_model_exports_and_runs_on_onnxruntime(real_root, tmp_path):
    import onnxruntime as ort

    from lpr_sweep import export

    masked, rebuilt, _ = _rebuilt(_real(real_root), 0.8)
    path = export.to_onnx(rebuilt, tmp_path / "s.onnx")
    x = _plates(real_root, 16)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = masked(x).numpy()
    assert abs(got - want).max() <= 1e-4 * abs(want).max()


def test_constant_channels_fold_into_unpadded_readers_and_stay_before_padded_ones():
    net = _net()
    with torch.no_grad():
        net.backbone[4].block[0].weight[:4] = 0  # feeds a padded (3,1) conv
        net.backbone[4].block[0].bias[:2] = 0.5  # -> constant 0.5 after ReLU: must stay
        net.backbone[4].block[0].bias[2:4] = -1.0  # -> constant 0: removable
        net.backbone[16].weight[:10] = 0  # feeds the unpadded 13x1 conv: folds whatever its constant
        net.backbone[0].weight[:3] = 0  # feeds the context and a 1x1 conv through a pool: folds
    import copy

    rebuilt = copy.deepcopy(net)
    report = channels.remove_dead_channels(rebuilt)
    assert report["backbone.4.block.0"] == (32, 30)
    assert report["backbone.16"] == (256, 246) and report["backbone.0"] == (64, 61)
    torch.manual_seed(2)
    _assert_same_logits(net, rebuilt, torch.randn(4, 3, 24, 94))


def test_killing_every_channel_of_a_layer_is_refused_by_name():
    net = _net()
    with torch.no_grad():
        net.backbone[16].weight.zero_()
    with pytest.raises(ConfigError, match="killed every output channel of backbone.16; lower prune.ratio"):
        channels.remove_dead_channels(net)


def test_unknown_structure_is_refused():
    with pytest.raises(ConfigError, match="knows LPRNet only, not Sequential"):
        channels.remove_dead_channels(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1)))
    net = _net()
    net.container.append(torch.nn.ReLU())
    with pytest.raises(ConfigError, match="container is not a single conv"):
        channels.remove_dead_channels(net)


@pytest.mark.parametrize("multiple, pool_multiple", [(8, 0), (16, 0), (8, 32)])
def test_aligned_channels_are_multiples_and_leave_the_logits_unchanged(real_root, tmp_path, multiple, pool_multiple):
    import onnxruntime as ort

    from lpr_sweep import export

    _, rebuilt, report = _rebuilt(_real(real_root), 0.9)
    aligned = _rebuilt(_real(real_root), 0.9)[1]
    added = channels.align_channels(aligned, multiple, pool_multiple)
    assert sum(added.values()) > 0  # global 0.9 leaves widths such as 33 and 77
    for name, conv in prune.conv_layers(aligned):
        assert conv.in_channels % multiple == 0 or name == "backbone.0", name  # its inputs are B, G, R
        if name != "container.0":  # its outputs are the classes
            assert conv.out_channels % multiple == 0 and conv.out_channels == report[name][1] + added[name], name
    pools = [m for m in aligned.modules() if isinstance(m, ChannelStridePool) and m.channels is not None]
    assert pools and all(len(p.channels) % (pool_multiple or multiple) == 0 for p in pools)
    x = _plates(real_root, 32)
    _assert_same_logits(rebuilt, aligned, x)  # zero channels add zeros (only the summation order may differ)
    with torch.no_grad():
        want = rebuilt(x)
    path = export.to_onnx(aligned, tmp_path / "aligned.onnx")
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert abs(got - want.numpy()).max() <= 1e-4 * float(want.abs().max())


@pytest.mark.parametrize("multiple, pool_multiple", [(1, 0), (8, 32)])
def test_sliced_pools_read_a_prefix_and_leave_the_logits_unchanged(real_root, tmp_path, multiple, pool_multiple):
    import onnx
    import onnxruntime as ort

    from lpr_sweep import export

    aligned = _rebuilt(_real(real_root), 0.9)[1]
    if multiple > 1:
        channels.align_channels(aligned, multiple, pool_multiple)
    sliced = _rebuilt(_real(real_root), 0.9)[1]
    if multiple > 1:
        channels.align_channels(sliced, multiple, pool_multiple)
    repeats = [len(m.channels) - len(set(m.channels.tolist())) for m in sliced.modules() if isinstance(m, ChannelStridePool)]
    added = channels.slice_pools(sliced, multiple)
    if pool_multiple:  # the pools pass on more channels than they have: repeats, which need new channels or spare ones
        assert sum(repeats) > sum(added.values())
    widths = {name: conv.out_channels for name, conv in prune.conv_layers(sliced)}
    for producer, pool, reader in [("backbone.0", 3, "backbone.4.block.0"), ("backbone.4.block.6", 7, "backbone.8.block.0"),
                                   ("backbone.11.block.6", 14, "backbone.16")]:
        p = sliced.backbone[pool]
        assert p.channels is None and 0 < p.first <= widths[producer] and widths[producer] % multiple == 0, producer
        assert dict(sliced.named_modules())[reader].in_channels == p.first
    x = _plates(real_root, 32)
    _assert_same_logits(aligned, sliced, x)
    with torch.no_grad():
        want = aligned(x)
    path = export.to_onnx(sliced, tmp_path / "sliced.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Gather" not in ops and "Split" in ops  # at 0.9, the second pool passes on fewer channels than it has
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert abs(got - want.numpy()).max() <= 1e-4 * float(want.abs().max())


def test_sliced_pools_on_a_model_not_rebuilt_only_reorder_it(real_root, tmp_path):
    """Unpruned and unstructured-pruned LPRNet: the pools take every second or fourth channel (a strided
    Slice in ONNX); sliced, they read a prefix of the same channels, reordered."""
    import copy

    import onnx

    from lpr_sweep import export

    masked = prune.run(_real(real_root), PruneConfig(ratio=0.5))
    sliced = copy.deepcopy(masked)
    assert channels.slice_pools(sliced, 8) == {"backbone.0": 0, "backbone.4.block.6": 0, "backbone.11.block.6": 0}
    assert [sliced.backbone[i].first for i in (3, 7, 14)] == [64, 64, 64]
    assert prune.sparsity(sliced) == prune.sparsity(masked)  # the pruned zeros move with their channels
    _assert_same_logits(masked, sliced, _plates(real_root, 32))
    steps = [list(a.ints) for node in onnx.load(str(export.to_onnx(sliced, tmp_path / "s.onnx"))).graph.node
             if node.op_type == "Slice" for a in node.attribute if a.name == "steps"]
    assert not any(s != [1] * len(s) for s in steps)
    with pytest.raises(ConfigError, match=r"prune.slice_pools: the model has no .* not LPRNet's; use prune.slice_pools=false"):
        net = _net()
        del net.backbone[3]
        channels.slice_pools(net)


@pytest.mark.parametrize("ratio, structured", [(0.0, False), (0.5, False), (0.9, True)])
def test_split_producers_leave_no_channel_selection_in_the_graph(real_root, tmp_path, ratio, structured):
    """Every form the presets export (dense, unstructured, structured and padded): after
    ``split_producers`` the ONNX graph holds no Slice, Split or Gather, and ORT's logits match the model's."""
    import copy

    import onnx
    import onnxruntime as ort

    from lpr_sweep import export

    cfg = PruneConfig(ratio=ratio, structured=structured, round_to=8 if structured else 1, pool_round_to=32 if structured else 0)
    before = prune.run(_real(real_root), cfg)
    if structured:
        channels.remove_dead_channels(before)
    split = copy.deepcopy(before)
    channels.reshape(split, cfg)
    assert any(isinstance(m, channels.SplitProducer) for m in split.modules())
    x = _plates(real_root, 32)
    _assert_same_logits(before, split, x)
    path = export.to_onnx(split, tmp_path / "split.onnx")
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert not ops & {"Slice", "Split", "Gather"}, ops
    with torch.no_grad():
        want = before(x)
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert abs(got - want.numpy()).max() <= 1e-4 * float(want.abs().max())


def test_alignment_needs_a_rebuilt_model():
    with pytest.raises(ValueError, match="run that first"):
        channels.align_channels(_net(), 8)
