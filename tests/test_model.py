import pytest
import torch
from torch import nn

from lpr_sweep import ConfigError, DataError, data
from lpr_sweep import model as lprnet


@pytest.mark.parametrize("channel_stride,w_stride", [(1, 1), (2, 2), (4, 2)])
def test_pool_equals_upstream_maxpool3d(channel_stride, w_stride):
    x = torch.randn(3, 256, 18, 44)
    upstream = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(channel_stride, 1, w_stride))
    assert torch.equal(upstream(x), lprnet.ChannelStridePool(channel_stride, w_stride)(x))


def test_loads_upstream_weights_strictly(real_root):
    net = lprnet.load(real_root / "weights" / "Final_LPRNet_model.pth")
    assert sum(p.numel() for p in net.parameters()) == 446_976
    assert not net.training
    assert net(torch.zeros(2, 3, 24, 94)).shape == (2, len(lprnet.CHARS), 18)


def test_missing_weights_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights not found: .*lpr_sweep.download"):
        lprnet.load(tmp_path / "nope.pth")


def test_weights_that_are_not_a_state_dict_are_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot load weights"):
        lprnet.load(bad)


def test_state_dict_with_other_keys_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(DataError, match=r"cannot load weights .*other.pth \(RuntimeError: Error\(s\) in loading state_dict"):
        lprnet.load(path)


def _plates(real_root, n):
    files = sorted(data.read_manifest(real_root / data.MANIFEST))
    return data.load_plates(real_root, [f for f in files if f.startswith("images/")][:n]).images


def test_sample_norm_makes_a_plate_independent_of_its_batch(real_root):
    x = torch.from_numpy(_plates(real_root, 8))
    net = lprnet.load(real_root / "weights" / "Final_LPRNet_model.pth", norm="sample")
    with torch.no_grad():
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-4)


def test_batch_norm_mode_keeps_upstream_batch_dependence(real_root):
    x = torch.from_numpy(_plates(real_root, 8))
    net = lprnet.load(real_root / "weights" / "Final_LPRNet_model.pth", norm="batch")
    with torch.no_grad():
        assert not torch.allclose(net(x)[:1], net(x[:1]), atol=1e-4)


def test_class_list_matches_the_data_readme():
    assert len(lprnet.CHARS) == 68 and lprnet.CHARS[lprnet.BLANK] == "-"
    assert lprnet.CHARS[31:41] == list("0123456789") and lprnet.CHARS[-3:-1] == ["I", "O"]


def test_unknown_norm_is_refused():
    with pytest.raises(ConfigError, match="model.norm='layer'"):
        lprnet.ModelConfig(norm="layer")
