import pytest
import torch

from lpr_sweep import ConfigError, prune
from lpr_sweep.model import LPRNet
from lpr_sweep.prune import PruneConfig, Scope


def _net():
    torch.manual_seed(0)
    return LPRNet().eval()


def test_layer_scope_prunes_every_conv_by_the_ratio():
    net = prune.run(_net(), PruneConfig(ratio=0.5, scope=Scope["layer"]))
    for name, conv in prune.conv_layers(net):
        zero = float((conv.weight == 0).float().mean())
        assert zero == pytest.approx(0.5, abs=0.02), name


def test_global_scope_reaches_the_ratio_overall_but_not_per_layer():
    net = prune.run(_net(), PruneConfig(ratio=0.7, scope=Scope["global"]))
    assert prune.sparsity(net) == pytest.approx(0.7, abs=1e-3)
    per_layer = [float((c.weight == 0).float().mean()) for _, c in prune.conv_layers(net)]
    assert max(per_layer) - min(per_layer) > 0.1


def test_pruning_is_permanent():
    net = prune.run(_net(), PruneConfig(ratio=0.3))
    keys = net.state_dict().keys()
    assert not [k for k in keys if k.endswith(("weight_orig", "weight_mask"))]
    assert set(keys) == set(LPRNet().state_dict().keys())
    assert not any(conv._forward_pre_hooks for _, conv in prune.conv_layers(net))


def test_ratio_zero_leaves_the_model_untouched():
    net, ref = _net(), _net()
    prune.run(net, PruneConfig(ratio=0.0))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    assert prune.sparsity(net) == 0.0


def test_sixteen_convs_are_pruned():
    assert len(prune.conv_layers(_net())) == 16


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_range_is_refused(ratio):
    with pytest.raises(ConfigError, match=f"prune.ratio={ratio} is outside"):
        PruneConfig(ratio=ratio)


def test_padding_needs_a_structured_config():
    with pytest.raises(ConfigError, match=r"prune.round_to=8 pads the channels of a structured model; add prune.structured=true"):
        PruneConfig(ratio=0.5, round_to=8)
    with pytest.raises(ConfigError, match=r"prune.round_to=0 must be >= 1"):
        PruneConfig(ratio=0.5, structured=True, round_to=0)
    with pytest.raises(ConfigError, match=r"prune.pool_round_to=32 pads the channels of a structured model; .* prune.pool_round_to=0"):
        PruneConfig(ratio=0.5, pool_round_to=32)
    with pytest.raises(ConfigError, match=r"prune.pool_round_to=-1 must be >= 0"):
        PruneConfig(ratio=0.5, structured=True, pool_round_to=-1)
    assert PruneConfig(structured=True, round_to=8).pools_to == 8 and PruneConfig(structured=True, round_to=8, pool_round_to=32).pools_to == 32


def test_a_stage_ratio_prunes_that_stage_alone_and_leaves_the_rest_as_the_global_ranking_did():
    plain = prune.run(_net(), PruneConfig(ratio=0.9))
    staged = prune.run(_net(), PruneConfig(ratio=0.9, stages=prune.StageRatios(block3=0.5, head=0.97)))
    for (name, a), (_, b) in zip(prune.conv_layers(plain), prune.conv_layers(staged)):
        if prune.stage_of(name) not in ("block3", "head"):
            assert torch.equal(a.weight, b.weight), name
    zeros = {s: [float((c.weight == 0).float().mean()) for n, c in prune.conv_layers(staged) if prune.stage_of(n) == s]
             for s in ("block3", "head")}
    assert zeros["head"] == [pytest.approx(0.97, abs=1e-3)]  # one conv: exactly its ratio
    block3 = [c.weight for n, c in prune.conv_layers(staged) if prune.stage_of(n) == "block3"]
    assert sum(int((w == 0).sum()) for w in block3) / sum(w.numel() for w in block3) == pytest.approx(0.5, abs=1e-3)
    assert {prune.stage_of(n) for n, _ in prune.conv_layers(plain)} == set(prune.STAGES)  # every conv has a stage
    with pytest.raises(ConfigError, match=r"prune.stages.block1=1.2 is outside \[0, 1\)"):
        prune.StageRatios(block1=1.2)
