"""A runtime and a quant backend added from outside the package, the way docs/extending.md says: one
module, one YAML, and a trial runs through them."""
import sys
import textwrap

import pytest

from conftest import TINY, compose_cfg
from lpr_sweep import ConfigError, config, pipeline, quant, runtime
from lpr_sweep.registry import Registry

RUNTIME_MODULE = '''
"""ONNX Runtime in disguise: a new runtime name, one class."""
import onnxruntime as ort

from lpr_sweep import size
from lpr_sweep.runtime import register


@register("plainort")
class PlainOrt:
    packages = ("onnxruntime",)
    devices = ("cpu",)

    def __init__(self, model_file, hardware, workdir):
        self.path = model_file.path
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.artifacts = [self.path]

    def __call__(self, batch):
        return self.session.run(None, {"input": batch})[0]

    def constants(self):
        return size.onnx_tensors(self.path)
'''

BACKEND_MODULE = '''
"""A "quantizer" that copies the fp32 model: enough to run the guard, the cache and tracking."""
import shutil

from lpr_sweep.model_file import ModelFile
from lpr_sweep.quant import Backend, register


def quantize(fp32, calib, method, keep, cfg, out):
    return ModelFile(fp32.module, shutil.copy(fp32.path, out / "model_copy.onnx"))


register(Backend("copy", methods=("exact",), runtimes=("plainort",), quantize=quantize, packages=("numpy",)))
'''


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    code = tmp_path / "code"
    code.mkdir()
    (code / "plainort_runtime.py").write_text(textwrap.dedent(RUNTIME_MODULE))
    (code / "copy_quant.py").write_text(textwrap.dedent(BACKEND_MODULE))
    monkeypatch.syspath_prepend(str(code))
    conf = tmp_path / "conf"
    (conf / "runtime").mkdir(parents=True)
    (conf / "quant").mkdir()
    (conf / "runtime" / "plainort.yaml").write_text("# ONNX Runtime by another name\nname: plainort\nmodule: plainort_runtime\n")
    (conf / "quant" / "copy.yaml").write_text("# copies the model\nbackend: copy\nmodule: copy_quant\n")
    # Each test registers afresh: restore the registries and forget the modules afterwards.
    monkeypatch.setattr(runtime._REGISTRY, "entries", dict(runtime._REGISTRY.entries))
    monkeypatch.setattr(quant._REGISTRY, "entries", dict(quant._REGISTRY.entries))
    yield f"hydra.searchpath=[file://{conf}]"
    for module in ("plainort_runtime", "copy_quant"):
        sys.modules.pop(module, None)


def test_a_new_runtime_and_backend_run_a_trial(plugins, tmp_path, tiny_root, store):
    overrides = [plugins, "runtime=plainort", "quant=copy", f"data.root={tiny_root}", f"cache.dir={tmp_path}/cache", *TINY, *store]
    metrics = pipeline.run(compose_cfg(overrides), workdir=tmp_path / "w")
    assert metrics["quant_candidates"] == 1 and metrics["accuracy_drop_pts"] == 0.0
    assert metrics["size_file_bytes"] == (tmp_path / "w" / "model.onnx").stat().st_size
    import mlflow

    (run,) = mlflow.search_runs(experiment_names=["lpr_sweep"], output_format="list")
    assert run.info.status == "FINISHED" and run.data.params["runtime.name"] == "plainort"
    assert run.data.params["quant.chosen_method"] == "exact" and "version.onnxruntime" in run.data.tags
    assert "model_copy.onnx" in {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}


def test_the_backend_declares_where_it_runs(plugins):
    with pytest.raises(ConfigError, match="quant=copy cannot run on runtime=onnxruntime; use runtime=plainort"):
        config.validate(compose_cfg([plugins, "quant=copy"]))


def test_unknown_names_list_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"runtime='tensorrt' is unknown; choose one of \[.*'onnxruntime'.*'tvm'\]"):
        runtime.get("tensorrt")
    with pytest.raises(ConfigError, match=r"quant='awq' is unknown; choose one of \[.*'nncf'.*\]"):
        quant.QuantConfig(backend="awq")


def test_a_module_missing_a_dependency_says_so(tmp_path, monkeypatch):
    (tmp_path / "needs_missing.py").write_text("import no_such_package_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_package_here"):
        Registry("runtime", "nowhere", []).get("x", "needs_missing")
