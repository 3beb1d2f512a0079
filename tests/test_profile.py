"""Per-op profiles (lpr_sweep.profile): each runtime's counters name the graph's ops; the report shows the costliest."""
import collections

import numpy as np
import onnx
import pytest
import torch

from lpr_sweep import ConfigError, config, export, profile, prune, report, runtime
from lpr_sweep.hardware import HardwareConfig
from lpr_sweep.model import LPRNet
from lpr_sweep.model_file import ModelFile
from lpr_sweep.prune import PruneConfig, channels
from lpr_sweep.selection import Trial
from lpr_sweep.runtime import RuntimeConfig

CFG = profile.ProfileConfig(warmup=2, calls=100)


@pytest.fixture(scope="module")
def split_onnx(tmp_path_factory):
    """A random LPRNet as every non-TVM preset exports it (producers split), and its graph's op counts."""
    torch.manual_seed(0)
    net = LPRNet().eval()
    channels.reshape(net, PruneConfig())
    path = export.to_onnx(net, tmp_path_factory.mktemp("p") / "m.onnx")
    return path, onnx.load(str(path)).graph


@pytest.mark.parametrize("name, conv", [("onnxruntime", "Conv"), ("openvino", "Convolution")])
def test_a_profile_names_every_conv_of_the_graph_once(split_onnx, tmp_path, name, conv):
    path, graph = split_onnx
    rows = profile.take(CFG, RuntimeConfig(name), ModelFile(None, path), HardwareConfig(threads=1), np.zeros((1, 3, 24, 94), np.float32),
                        tmp_path)
    kinds = collections.Counter(r["op_type"] for r in rows)
    assert kinds[conv] == sum(n.op_type == "Conv" for n in graph.node)
    assert kinds["MaxPool"] == 3 and all(r["us_per_call"] >= 0 for r in rows)
    assert [r["us_per_call"] for r in rows] == sorted((r["us_per_call"] for r in rows), reverse=True)
    if name == "openvino":  # it names nodes after the ONNX graph's, and each kernel
        assert {r["node"].split("/")[0] for r in rows if r["op_type"] == conv} == {n.name for n in graph.node if n.op_type == "Conv"}
        assert {r["op_type"] for r in rows if profile.is_ref(r)} <= {"Concat"}  # no strided Slice, Split or Gather left
        stages = profile.by_stage(rows, path)  # every conv's time, by the LPRNet stage its weight belongs to
        assert set(stages) == set(prune.STAGES) and all(v > 0 for v in stages.values())
        assert sum(stages.values()) == pytest.approx(sum(r["us_per_call"] for r in rows if r["op_type"] == conv))
    else:
        assert profile.by_stage(rows, path) == {}  # ONNX Runtime renames the nodes it fuses
    m = profile.metrics(rows, getattr(runtime.get(name), "kernel_names", False))
    assert m["profile_ops"] == len(rows) and m["profile_total_us"] == pytest.approx(sum(r["us_per_call"] for r in rows))
    assert ("profile_ref_kernel_us" in m) == (name == "openvino")  # ONNX Runtime does not say which kernels are reference ones
    png = profile.plot(rows, "t", tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_tvm_profile_times_every_kernel_and_vm_builtin_the_library_calls(tiny_onnx, tmp_path):
    from conftest import TVM_HW, tvm_cfg

    from lpr_sweep import compile

    library, _ = compile.run(tiny_onnx, tvm_cfg(tmp_path, total_trials=0), TVM_HW, tmp_path)
    rows = profile.take(CFG, RuntimeConfig("tvm"), library, TVM_HW, np.zeros((1, 3, 24, 94), np.float32), tmp_path / "p")
    kernels = {r["node"]: r for r in rows if r["kernel"] == "tvm"}
    assert set(kernels) == {"fused_conv2d_add_relu", "mean"}  # TinyConv: one conv (+ bias, relu), one mean
    assert kernels["fused_conv2d_add_relu"]["op_type"] == "fused_conv2d_add_relu" and all(r["us_per_call"] > 0 for r in kernels.values())
    assert any(r["op_type"].startswith("vm.builtin.alloc") for r in rows)  # the VM's own work is time too


def test_runtimes_without_counters_give_no_profile_and_bad_settings_fail_in_one_line(split_onnx, tmp_path):
    path, _ = split_onnx
    assert profile.take(CFG, RuntimeConfig("torch"), ModelFile(None, path), HardwareConfig(), np.zeros((1, 3, 24, 94), np.float32), tmp_path) == []
    assert profile.available(RuntimeConfig("tvm")) and not profile.available(RuntimeConfig("torch"))
    assert profile.take(profile.ProfileConfig(enabled=False), RuntimeConfig("openvino"), ModelFile(None, path), HardwareConfig(),
                        np.zeros((1, 3, 24, 94), np.float32), tmp_path) == []
    with pytest.raises(ConfigError, match="profile.calls=10 must be >= 100"):
        profile.ProfileConfig(calls=10)


def test_the_report_shows_the_champions_costliest_ops():
    rows = [{"node": f"n{i}", "op_type": "Convolution", "kernel": "ref_f32" if i == 0 else "jit_avx512_f32", "precision": "f32",
             "us_per_call": 100.0 - i} for i in range(8)]
    champion = Trial("r", "quant", "FINISHED", {"profile_ref_kernel_us": 100.0}, {"runtime.name": "openvino", "profile.calls": "200"})
    lines = report.costliest(champion, rows)
    assert "## Where the champion's time goes (quant)" in lines and sum(line.startswith(("| n0", "| n1", "| n2", "| n3", "| n4", "| n5", "| n6", "| n7")) for line in lines) == 5
    assert "| n0 | Convolution | ref_f32 | f32 | 100.0 | 13 % |" in lines and "100 µs in reference kernels" in "\n".join(lines)
    assert "No per-op profile: runtime tvm" in report.costliest(Trial("r", "mlc", "FINISHED", {}, {"runtime.name": "tvm"}), [])[-1]


def test_precision_is_a_knob_openvino_takes_and_others_refuse():
    with pytest.raises(ConfigError, match=r"runtime=onnxruntime runs fp32 only, not runtime.precision=bf16"):
        config.validate(_compose(["runtime.precision=bf16"]))
    with pytest.raises(ConfigError, match=r"runtime.precision='fp16' is not one of"):
        config.validate(_compose(["runtime=openvino", "runtime.precision=fp16"]))
    assert runtime.options(RuntimeConfig("openvino", precision="bf16")) == {"precision": "bf16"} and runtime.options("openvino") == {}


def _compose(overrides):
    from conftest import compose_cfg

    return compose_cfg(overrides)


def test_a_profile_that_fails_costs_the_trial_nothing(tmp_path, tiny_root, store, monkeypatch):
    import mlflow

    from conftest import TINY, compose_cfg
    from lpr_sweep import pipeline

    def broken(*args, **kwargs):
        raise OSError("counters unavailable")

    monkeypatch.setattr(profile, "take", broken)
    metrics = pipeline.run(compose_cfg([f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", *TINY, *store]), workdir=tmp_path / "w")
    assert "speedup" in metrics and "profile_ops" not in metrics
    (run,) = mlflow.search_runs(experiment_names=["lpr_sweep"], output_format="list")
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert run.info.status == "FINISHED" and "predictions.csv" in names and "profile.csv" not in names
