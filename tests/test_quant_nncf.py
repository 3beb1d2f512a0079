"""quant=nncf: what the presets pick."""
from conftest import compose_cfg
from lpr_sweep import config


def test_presets_pick_nncf_on_openvino():
    for preset in ("quant", "prune_quant"):
        conf = config.validate(compose_cfg([f"optimization={preset}"]))
        assert (conf.quant.backend, conf.runtime.name) == ("nncf", "openvino")
    assert config.validate(compose_cfg(["optimization=prune_quant"])).prune.ratio == 0.5
