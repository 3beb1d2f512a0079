"""TVM on a tiny ONNX model: untuned, prepacked and NHWC builds against ONNX Runtime; bad input.
Tuning and its database: test_tune.py."""

import pytest
from conftest import TVM_HW, check_tvm_matches_ort, tvm_cfg

from lpr_sweep import ConfigError, compile, runtime, tune
from lpr_sweep.compile import CompileConfig

pytestmark = pytest.mark.slow


def test_untuned_prepacked_and_nhwc_builds_match_ort(tiny_onnx, tmp_path):
    for prepack, layout in ((False, "NCHW"), (True, "NCHW"), (False, "NHWC")):
        out = tmp_path / f"{prepack}{layout}"
        out.mkdir()
        cfg = tvm_cfg(tmp_path, total_trials=0, cpu_weight_prepack=prepack, layout=layout)
        compiled, stats = compile.run(tiny_onnx, cfg, TVM_HW, out)
        assert stats["tune_trials_run"] == 0
        check_tvm_matches_ort(tiny_onnx, compiled)
        rt = runtime.build("tvm", compiled, TVM_HW, out)
        assert [p.suffix for p in rt.artifacts] == [".so", ".npz"][: 1 + prepack]


def test_an_unparsable_target_is_refused_and_a_cpu_name_is_taken(tiny_onnx, tmp_path):
    assert compile.target_of(tvm_cfg(tmp_path, target="znver3"), 2).attrs["mcpu"] == "znver3"  # how make records tunes AVX2
    with pytest.raises(ConfigError, match="'llvm -mcpu=znver4' is not a CPU LLVM knows; use auto, a name such as znver3"):
        compile.run(tiny_onnx, tvm_cfg(tmp_path, target="llvm -mcpu=znver4"), TVM_HW, tmp_path)
    with pytest.raises(ConfigError, match="is not a JSON target"):
        compile.run(tiny_onnx, tvm_cfg(tmp_path, target='{"kind": llvm}'), TVM_HW, tmp_path)
    with pytest.raises(ConfigError, match="TVM cannot parse it"):
        compile.run(tiny_onnx, tvm_cfg(tmp_path, target='{"kind": "no-such-kind"}'), TVM_HW, tmp_path)


@pytest.mark.parametrize("key", ["total_trials", "trials_per_task", "trials_per_iter"])
def test_a_negative_budget_is_refused(key):
    with pytest.raises(ConfigError, match=f"compile.{key}=-1 is negative"):
        CompileConfig(**{key: -1})


def test_an_unknown_layout_is_refused():
    with pytest.raises(ConfigError, match="compile.layout=NCWH; use one of NCHW, NHWC"):
        CompileConfig(layout="NCWH")


def test_nhwc_converts_the_convolutions_before_tuning(tiny_onnx):
    target = compile.target_of(CompileConfig(), 2)
    nchw, nhwc = (compile.graph(tiny_onnx.path, target, False, layout)[0] for layout in ("NCHW", "NHWC"))
    assert "transpose" not in nchw.script(show_meta=False) and "transpose" in nhwc.script(show_meta=False)
    assert tune.key_of(nchw, target, CompileConfig()) != tune.key_of(nhwc, target, CompileConfig())


