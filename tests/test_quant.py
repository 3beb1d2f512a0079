from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_cfg
from lpr_sweep import ConfigError, config, evaluate, export, prune, quant, runtime, size
from lpr_sweep.data import Plates, encode
from lpr_sweep.hardware import HardwareConfig
from lpr_sweep.model import BLANK, CHARS, LPRNet
from lpr_sweep.prune import PruneConfig
from lpr_sweep.quant import QuantConfig


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised LPRNet pruned to 60 %, its ONNX file, and 20 random calibration inputs."""
    torch.manual_seed(0)
    net = prune.run(LPRNet().eval(), PruneConfig(ratio=0.6))
    workdir = tmp_path_factory.mktemp("quant")
    calib = np.random.default_rng(0).standard_normal((20, 3, 24, 94)).astype(np.float32)
    return runtime.Prepared(net, export.to_onnx(net, workdir / "fp32.onnx")), calib, workdir


# TVM runs compiled libraries, not these graphs directly: test_compile covers it.
CASES = [(b, m, rt) for b, methods in quant.METHODS.items() for m in methods for rt in quant.RUNTIMES[b] if rt != "tvm"]


@pytest.mark.parametrize("backend,method,runtime_name", CASES)
def test_every_backend_and_method_yields_an_int8_model_close_to_fp32(tiny, tmp_path, backend, method, runtime_name):
    fp32, calib, _ = tiny
    cfg = QuantConfig(backend=backend, method=method, compile=False)
    int8 = quant.BACKENDS[backend](fp32, calib, method, [], cfg, tmp_path)
    hw = HardwareConfig(threads=1)
    want = runtime.build(runtime_name, fp32, hw, tmp_path)(calib[:4])
    got = runtime.build(runtime_name, int8, hw, tmp_path)(calib[:4])
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95
    graph = int8.module if runtime_name == "torch" else int8.path
    assert any(t.dtype == np.int8 and t.ndim == 4 for t in size.tensors(graph)), "no int8 conv weights"
    assert size.int8_sparsity(graph) >= 0.6 - 1e-3  # the pruned zeros survive quantization


def test_keep_float_leaves_that_conv_unquantized(tiny, tmp_path):
    import onnx

    fp32, calib, _ = tiny
    int8 = quant.BACKENDS["ort_static"](fp32, calib, "minmax", ["container.0"], QuantConfig(backend="ort_static"), tmp_path)
    graph = onnx.load(str(int8.path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = {n.input[1]: n for n in graph.node if n.op_type == "Conv"}
    weight_of = {name: producers.get(name) for name in convs}
    float_weights = [w for w, p in weight_of.items() if p is None or p.op_type != "DequantizeLinear"]
    assert float_weights == ["container.0.weight"]


# --- the guard, on a model built so that one conv is sensitive


SENSITIVE = "backbone.20"
LAYERS = ["backbone.0", "backbone.16", SENSITIVE, "container.0"]
LABELS = ["京A1", "沪B2", "川C3", "浙D4", "苏E5", "粤F6", "鲁G7", "豫H8", "闽J9", "赣K0"]


def _plates():
    images = np.zeros((len(LABELS), 3, 24, 94), np.float32)
    images[:, 0, 0, 0] = range(len(LABELS))
    return Plates([f"images/{t}.jpg" for t in LABELS], LABELS, images)


def _logits(labels, n_wrong):
    out = np.zeros((len(labels), len(CHARS), 6), np.float32)
    for i, label in enumerate(labels):
        path = encode(label) + [BLANK] * 3
        if i < n_wrong:
            path[0] = encode("京")[0] if label[0] != "京" else encode("沪")[0]
        out[i, path, range(6)] = 1.0
    return out


class FakeRuntime:
    """Plays a quantized model: quantizing SENSITIVE ruins 5 of 10 plates, every other conv 1 in 10."""

    name = "fake"

    def __init__(self, prepared):
        method, _, kept = prepared.path.name.partition("|")
        kept = set(filter(None, kept.split(",")))
        quantized = set(LAYERS) - kept if method != "fp32" else set()
        self.n_wrong = 5 * (SENSITIVE in quantized) + (len(quantized - {SENSITIVE}) > 1) + (method == "minmax")

    def __call__(self, batch):
        idx = batch[:, 0, 0, 0].astype(int)
        return _logits([LABELS[i] for i in idx], self.n_wrong)


@pytest.fixture
def fake_backend(monkeypatch):
    calls = []

    def fake(fp32, images, method, keep, cfg, out):
        calls.append((method, tuple(keep)))
        return runtime.Prepared(fp32.module, Path(f"{method}|{','.join(keep)}"))

    monkeypatch.setitem(quant.BACKENDS, "ort_static", fake)
    return calls


def _guard(cfg, tmp_path):
    plates = _plates()
    return quant.run(
        runtime.Prepared(torch.nn.Identity(), Path("fp32|")), plates, plates, cfg, build=FakeRuntime,
        fp32_accuracy=1.0, layers=LAYERS, workdir=tmp_path, score_cfg=evaluate.EvaluateConfig(batch_size=len(LABELS)),
    )


def test_guard_tries_methods_then_the_measured_most_sensitive_conv(fake_backend, tmp_path):
    guard = _guard(QuantConfig(backend="ort_static", method="minmax", max_drop=15.0, calib_size=10), tmp_path)
    steps = [(r["method"], r["keep_float"]) for r in guard.rows]
    # configured method, then the backend's others in order, then one float conv at a time
    assert steps == [("minmax", "-"), ("percentile", "-"), ("entropy", "-"), ("percentile", SENSITIVE)]
    assert guard.met and guard.row["keep_float"] == SENSITIVE and guard.row["drop_pts"] == pytest.approx(10.0)
    assert guard.sensitivity[0][0] == SENSITIVE  # measured: keeping it float cut the logit error most
    assert {k for _, k in fake_backend[3:-1]} == {(layer,) for layer in LAYERS}  # one probe per conv


def test_guard_stops_at_the_first_candidate_that_meets_it(fake_backend, tmp_path):
    guard = _guard(QuantConfig(backend="ort_static", keep_float=[SENSITIVE], max_drop=15.0), tmp_path)
    assert len(guard.rows) == 1 and guard.met


def test_guard_not_met_reports_the_best_candidate(fake_backend, tmp_path):
    guard = _guard(QuantConfig(backend="ort_static", max_drop=0.0, max_float_layers=2), tmp_path)
    assert not guard.met
    assert guard.row["accuracy"] == max(r["accuracy"] for r in guard.rows)
    assert len(guard.rows) == 3 + 2


def test_keep_float_must_name_convs_of_the_model(fake_backend, tmp_path):
    with pytest.raises(ConfigError, match=r"quant.keep_float names \['nope'\]"):
        _guard(QuantConfig(backend="ort_static", keep_float=["nope"]), tmp_path)
    assert fake_backend == []  # refused before any work


# --- bad input, refused when the config is validated


@pytest.mark.parametrize("overrides,message", [
    (["quant=ort_static", "quant.calib_size=200"], r"quant.calib_size=200 exceeds the calibration split \(data.calib_size=100\)"),
    (["quant=nncf", "runtime=openvino", "quant.method=entropy"], r"quant.method='entropy' is not a calibration method of quant=nncf"),
    (["quant=ort_static", "quant.method=kl"], r"quant.method='kl' is not a calibration method of quant=ort_static"),
    (["quant=nncf", "runtime=onnxruntime"], "quant=nncf cannot run on runtime=onnxruntime; use runtime=openvino"),
    (["quant=torch_x86", "runtime=openvino"], "quant=torch_x86 cannot run on runtime=openvino; use runtime=torch"),
    (["quant=ort_static", "runtime=torch"], "quant=ort_static cannot run on runtime=torch; use runtime=onnxruntime"),
    (["quant=nncf", "runtime=openvino", "quant.max_drop=-1"], "quant.max_drop"),
])
def test_bad_quant_settings_are_refused_before_any_work(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(compose_cfg(overrides))


def test_presets_pick_nncf_on_openvino():
    for preset in ("quant", "prune_quant"):
        conf = config.validate(compose_cfg([f"optimization={preset}"]))
        assert (conf.quant.backend, conf.runtime.name) == ("nncf", "openvino")
    assert config.validate(compose_cfg(["optimization=prune_quant"])).prune.ratio == 0.5


def test_torch_x86_prints_no_deprecation_warning(tiny, tmp_path):
    """Run the PT2E path in a fresh interpreter with Python's default warning filters, as a user would."""
    import subprocess
    import sys

    fp32, calib, _ = tiny
    np.save(tmp_path / "calib.npy", calib)
    torch.save(fp32.module.state_dict(), tmp_path / "w.pt")
    code = (
        "import numpy as np, torch, pathlib; from lpr_sweep import quant, runtime; from lpr_sweep.model import LPRNet\n"
        f"net = LPRNet().eval(); net.load_state_dict(torch.load({str(tmp_path / 'w.pt')!r}, weights_only=True))\n"
        f"out = quant.BACKENDS['torch_x86'](runtime.Prepared(net, pathlib.Path('x.onnx')), np.load({str(tmp_path / 'calib.npy')!r}),"
        f" 'histogram', [], quant.QuantConfig(backend='torch_x86', compile=False), pathlib.Path({str(tmp_path)!r}))\n"
        "print(out.artifact)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "deprecat" not in (done.stdout + done.stderr).lower()
    assert done.stdout.strip().endswith("model_int8.pt2")
