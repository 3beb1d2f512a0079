from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import compose_cfg
from lpr_sweep import ConfigError, config, evaluate, quant, runtime, size
from lpr_sweep.data import Plates, encode
from lpr_sweep.hardware import HardwareConfig
from lpr_sweep.model import BLANK, CHARS
from lpr_sweep.model_file import ModelFile
from lpr_sweep.quant import QuantConfig


def _backend(name):
    return quant.backend_of(QuantConfig(backend=name))


# A runtime with a lowering stage (TVM) runs what it lowers, not these graphs directly: test_compile covers it.
CASES = [(b, m, rt) for b in quant.names() for m in _backend(b).methods for rt in _backend(b).runtimes
         if not getattr(runtime.get(rt), "lowering", None)]


@pytest.mark.parametrize("backend,method,runtime_name", CASES)
def test_every_backend_and_method_yields_an_int8_model_close_to_fp32(pruned_onnx, tmp_path, backend, method, runtime_name):
    fp32, calib, _ = pruned_onnx
    cfg = QuantConfig(backend=backend, method=method, compile=False)
    int8 = _backend(backend).quantize(fp32, calib, method, [], cfg, tmp_path)
    hw = HardwareConfig(threads=1)
    want = runtime.build(runtime_name, fp32, hw, tmp_path)(calib[:4])
    rt = runtime.build(runtime_name, int8, hw, tmp_path)
    got = rt(calib[:4])
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95
    assert any(t.dtype == np.int8 and t.ndim == 4 for t in rt.constants()), "no int8 conv weights"
    assert size.int8_sparsity(rt.constants()) >= 0.6 - 1e-3  # the pruned zeros survive quantization


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

    def __init__(self, model_file):
        method, _, kept = model_file.path.name.partition("|")
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
        return ModelFile(fp32.module, Path(f"{method}|{','.join(keep)}"))

    backend = quant.Backend("fake", methods=("percentile", "minmax", "entropy"), runtimes=("onnxruntime",), quantize=fake)
    monkeypatch.setitem(quant._REGISTRY.entries, "fake", backend)
    return calls


def _guard(cfg, tmp_path):
    plates = _plates()
    return quant.run(
        ModelFile(torch.nn.Identity(), Path("fp32|")), plates.images, cfg,
        score=lambda m: evaluate.run(FakeRuntime(m), plates, evaluate.EvaluateConfig(batch_size=len(LABELS))).accuracy,
        logits=lambda m, images: FakeRuntime(m)(images), fp32_accuracy=1.0, layers=LAYERS, workdir=tmp_path,
    )


def test_guard_tries_methods_then_the_measured_most_sensitive_conv(fake_backend, tmp_path):
    guard = _guard(QuantConfig(backend="fake", method="minmax", max_drop=15.0, calib_size=10), tmp_path)
    steps = [(r["method"], r["keep_float"]) for r in guard.rows]
    # configured method, then the backend's others in order, then one float conv at a time
    assert steps == [("minmax", "-"), ("percentile", "-"), ("entropy", "-"), ("percentile", SENSITIVE)]
    assert guard.met and guard.row["keep_float"] == SENSITIVE and guard.row["drop_pts"] == pytest.approx(10.0)
    assert guard.sensitivity[0][0] == SENSITIVE  # measured: keeping it float cut the logit error most
    assert {k for _, k in fake_backend[3:-1]} == {(layer,) for layer in LAYERS}  # one probe per conv


def test_guard_stops_at_the_first_candidate_that_meets_it(fake_backend, tmp_path):
    guard = _guard(QuantConfig(backend="fake", keep_float=[SENSITIVE], max_drop=15.0), tmp_path)
    assert len(guard.rows) == 1 and guard.met


def test_guard_not_met_reports_the_best_candidate(fake_backend, tmp_path):
    guard = _guard(QuantConfig(backend="fake", max_drop=0.0, max_float_layers=2), tmp_path)
    assert not guard.met
    assert guard.row["accuracy"] == max(r["accuracy"] for r in guard.rows)
    assert len(guard.rows) == 3 + 2


def test_keep_float_must_name_convs_of_the_model(fake_backend, tmp_path):
    with pytest.raises(ConfigError, match=r"quant.keep_float names \['nope'\]"):
        _guard(QuantConfig(backend="fake", keep_float=["nope"]), tmp_path)
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


def test_the_guard_decides_on_validation_plates_and_never_reads_a_scored_one(tmp_path, tiny_root, store, monkeypatch):
    from conftest import TINY
    from lpr_sweep import data, pipeline

    seen, inside = [], []
    run_guard, run_eval = quant.run, evaluate.run

    def guard(*args, **kwargs):
        inside.append(True)
        try:
            return run_guard(*args, **kwargs)
        finally:
            inside.pop()

    def spy(rt, plates, cfg):
        if inside:
            seen.extend(plates.files)
        return run_eval(rt, plates, cfg)

    monkeypatch.setattr(quant, "run", guard)
    monkeypatch.setattr(evaluate, "run", spy)
    overrides = [f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", "quant=ort_static", *TINY, *store]
    metrics = pipeline.run(compose_cfg(overrides), workdir=tmp_path / "w")
    _, calib, val, scored = data.load(data.DataConfig(root=str(tiny_root), calib_size=2, val_size=2))
    assert metrics["quant_candidates"] >= 1 and seen  # the guard scored its candidates ...
    assert set(seen) == set(val.files) and not set(seen) & set(scored.files)  # ... on the validation plates only
