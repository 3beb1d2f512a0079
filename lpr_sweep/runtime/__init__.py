"""Runtimes run a model file on a batch of plates and name the deployable files they run.

Adding a runtime is one module, one YAML and one test (docs/extending.md, "Adding a runtime"):
- a module in this package named like the runtime (or any importable module, named by
  ``runtime.module``) whose class is decorated with ``@register(name)``;
- ``conf/runtime/<name>.yaml`` with ``name: <name>``;
- ``tests/test_runtime_<name>.py``.

The class says what it needs, so no other module names it:
- ``packages``: the packages whose versions change what it runs (cache keys, run tags);
- ``devices``: the ``hardware.device`` values it runs on;
- ``precisions`` (optional, default fp32 only): the ``runtime.precision`` values it takes, passed
  to its constructor as ``precision`` when not fp32;
- ``profile(...)`` (optional classmethod): per-op rows for ``lpr_sweep.profile``;
- ``check(conf)`` (optional): refuses a whole-trial config it cannot run, with a ConfigError;
- ``lowering`` (optional): the stage that turns the ONNX file into what it loads, named like the
  module ``lpr_sweep.<lowering>`` and its config group; TVM's is ``compile``.
An instance is built from ``(model_file, hardware, workdir)``; it is called on (N, 3, 24, 94)
float32 batches and returns (N, classes, 18) logits, lists its deployable ``artifacts``, and yields
the ``constants()`` that size counts.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np

from lpr_sweep import ConfigError
from lpr_sweep import hardware as hw
from lpr_sweep.model_file import ModelFile
from lpr_sweep.registry import Registry


PRECISIONS = ("fp32", "bf16")


@dataclass
class RuntimeConfig:
    name: str = "onnxruntime"
    module: str = ""  # where it registers; "" = lpr_sweep.runtime.<name>
    precision: str = "fp32"  # float math: fp32, or bf16 where the runtime declares it (openvino); int8 kernels stay int8

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"runtime.precision={self.precision!r} is not one of {PRECISIONS}; use runtime.precision=fp32")


class Runtime(Protocol):
    name: str
    artifacts: list[Path]  # the files a user deploys; size_file_bytes sums them

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, 24, 94) float32 -> (N, classes, 18) logits."""

    def constants(self) -> Iterable[np.ndarray]:
        """The constant tensors of what it runs: size counts their nonzero bytes."""


_REGISTRY = Registry("runtime", __name__, __path__)


def register(name: str):
    def add(cls):
        _REGISTRY.add(name, cls)
        cls.name = name
        return cls

    return add


def names() -> list[str]:
    return _REGISTRY.names()


def get(cfg: RuntimeConfig | str) -> Any:
    """The registered class for ``runtime.name``, importing its module on first use."""
    cfg = RuntimeConfig(name=cfg) if isinstance(cfg, str) else cfg
    return _REGISTRY.get(cfg.name, cfg.module)


def check(conf: Any) -> None:
    """Whole-config checks the trial's runtime declares, before any work."""
    cls = get(conf.runtime)
    _check_device(cls, conf.hardware.device)
    if conf.runtime.precision not in getattr(cls, "precisions", ("fp32",)):
        raise ConfigError(f"runtime={cls.name} runs fp32 only, not runtime.precision={conf.runtime.precision}; "
                          "use runtime=openvino for bf16, or runtime.precision=fp32")
    if hasattr(cls, "check"):
        cls.check(conf)


def _check_device(cls: Any, device: str) -> None:
    if device not in cls.devices:
        raise ConfigError(f"runtime={cls.name} with hardware={device}: it runs on {', '.join(cls.devices)}; use hardware={cls.devices[0]}")


def lower(conf: Any, model_file: ModelFile, workdir: Path) -> tuple[ModelFile, dict[str, float]]:
    """Run the runtime's lowering stage, if it has one; (what it loads, the stage's metrics)."""
    stage = getattr(get(conf.runtime), "lowering", None)
    if stage is None:
        return model_file, {}
    module = importlib.import_module(f"lpr_sweep.{stage}")
    return module.run(model_file, getattr(conf, stage), conf.hardware, Path(workdir))


def options(cfg: RuntimeConfig | str) -> dict[str, str]:
    """What the runtime's constructor and ``profile`` take beyond the defaults."""
    precision = "fp32" if isinstance(cfg, str) else cfg.precision
    return {} if precision == "fp32" else {"precision": precision}


def build(cfg: RuntimeConfig | str, model_file: ModelFile, hardware: hw.HardwareConfig, workdir: Path) -> Runtime:
    cls = get(cfg)
    _check_device(cls, hardware.device)
    return cls(model_file, hardware, Path(workdir), **options(cfg))
