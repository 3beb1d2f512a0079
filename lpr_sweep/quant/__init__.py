"""Int8 post-training quantization with an accuracy guard.

Adding a quant backend is one module, one YAML and one test (docs/extending.md, "Adding a quant backend"): a
module in this package named like the backend (or any importable module, named by
``quant.module``) that calls ``register(Backend(...))``, ``conf/quant/<name>.yaml`` and
``tests/test_quant_<name>.py``. The record says everything the rest of the code needs: its
calibration methods (default first), the runtimes its product runs on, whether that product is a
file the stage cache can keep, and the packages whose versions change it.

The guard: when a candidate loses more than ``max_drop`` points against this trial's fp32 model,
try the backend's other calibration methods, then keep the most sensitive convs in float one more
at a time. The guard decides with the ``score`` function it is given (the pipeline scores on the
validation plates, never the scored ones). Sensitivity is measured on the calibration plates: for
each conv, how much the logit error against fp32 falls when only that conv stays float.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from lpr_sweep import ConfigError
from lpr_sweep.model_file import ModelFile
from lpr_sweep.registry import Registry

log = logging.getLogger(__name__)
CALIB_BATCH = 10
GUARD_FILE = "guard.json"

# (fp32 model, calibration images, method, convs kept float, config, output folder) -> int8 model
Quantize = Callable[[ModelFile, np.ndarray, str, list[str], "QuantConfig", Path], ModelFile]


@dataclass(frozen=True)
class Backend:
    name: str
    methods: tuple[str, ...]  # calibration methods, the default first (each default was the most accurate we measured)
    runtimes: tuple[str, ...]  # runtimes its product runs on, the one to suggest first
    quantize: Quantize
    cacheable: bool = True  # False when the product is an in-memory module the stage cache cannot store
    packages: tuple[str, ...] = ()  # whose versions change the product: part of cache keys and run tags


_REGISTRY = Registry("quant", __name__, __path__)


def register(backend: Backend) -> Backend:
    return _REGISTRY.add(backend.name, backend)


def names() -> list[str]:
    return _REGISTRY.names()


@dataclass
class QuantConfig:
    backend: str = "none"  # none | ort_static | nncf | torch_x86 | a registered backend
    module: str = ""  # where the backend registers; "" = lpr_sweep.quant.<backend>
    method: str = "default"  # calibration method; default = the backend's first
    calib_size: int = 100  # plates taken from the calibration split
    keep_float: list[str] = field(default_factory=list)  # conv module names kept float, e.g. [backbone.20]
    max_drop: float = 1.0  # accuracy points allowed against this trial's fp32 model, on the validation plates
    max_float_layers: int = 3  # how many sensitive convs the guard may keep in float
    compile: bool = True  # torch_x86: torch.compile the int8 module, which is what makes it fast

    def __post_init__(self):
        if self.backend != "none":
            methods = backend_of(self).methods
            if self.method not in ("default", *methods):
                raise ConfigError(
                    f"quant.method={self.method!r} is not a calibration method of quant={self.backend}; use one of {methods}"
                )
        if self.calib_size < 1:
            raise ConfigError(f"quant.calib_size={self.calib_size} must be >= 1")
        if self.max_drop < 0 or self.max_float_layers < 0:
            raise ConfigError("quant.max_drop and quant.max_float_layers must be >= 0")

    def methods(self) -> list[str]:
        """The configured method first, then the backend's others: the guard's order."""
        own = backend_of(self).methods
        first = own[0] if self.method == "default" else self.method
        return [first] + [m for m in own if m != first]


def backend_of(cfg: QuantConfig) -> Backend:
    """The registered backend for ``quant.backend``, importing its module on first use."""
    return _REGISTRY.get(cfg.backend, cfg.module)


def check_pairing(cfg: QuantConfig, runtime_name: str, calib_split: int, val_split: int) -> None:
    """Cross-group checks, run when the config is validated."""
    if cfg.backend == "none":
        return
    if val_split < 1:
        raise ConfigError(f"quant={cfg.backend} needs validation plates for its accuracy guard (data.val_size=0); "
                          "set data.val_size=200 (the guard never reads the scored plates)")
    runtimes = backend_of(cfg).runtimes
    if runtime_name not in runtimes:
        raise ConfigError(f"quant={cfg.backend} cannot run on runtime={runtime_name}; use runtime={runtimes[0]}")
    if cfg.calib_size > calib_split:
        raise ConfigError(
            f"quant.calib_size={cfg.calib_size} exceeds the calibration split (data.calib_size={calib_split}); "
            "lower quant.calib_size or raise data.calib_size"
        )


@dataclass
class Guard:
    """What the guard tried and chose; ``rows`` becomes the candidates artifact."""

    chosen: ModelFile
    row: dict  # the chosen candidate's row
    met: bool
    rows: list[dict] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)

    def save(self, out: Path) -> None:
        """The chosen file's folder and the decision, for the stage cache."""
        shutil.copytree(self.chosen.path.parent, out / "chosen")
        record = {"file": self.chosen.path.name, "row": self.row, "met": self.met, "rows": self.rows,
                  "sensitivity": self.sensitivity}
        (out / GUARD_FILE).write_text(json.dumps(record, default=float))

    @classmethod
    def load(cls, folder: Path, fp32: ModelFile) -> "Guard":
        record = json.loads((folder / GUARD_FILE).read_text())
        chosen = ModelFile(fp32.module, folder / "chosen" / record["file"])
        return cls(chosen, record["row"], record["met"], record["rows"], [tuple(s) for s in record["sensitivity"]])


def sensitivity(quantize: Callable[[str, list[str]], ModelFile], logits: Callable[[ModelFile, np.ndarray], np.ndarray],
                fp32: ModelFile, calib: np.ndarray, method: str, layers: list[str], keep: list[str]) -> list[tuple[str, float]]:
    """(conv, logit MSE against fp32 with that conv kept float), least error first."""
    reference = logits(fp32, calib)
    errors = []
    for layer in layers:
        if layer in keep:
            continue
        errors.append((layer, float(np.mean((logits(quantize(method, [*keep, layer]), calib) - reference) ** 2))))
    return sorted(errors, key=lambda e: e[1])


def run(fp32: ModelFile, calib: np.ndarray, cfg: QuantConfig, *, score: Callable[[ModelFile], float],
        logits: Callable[[ModelFile, np.ndarray], np.ndarray], fp32_accuracy: float, layers: list[str],
        workdir: Path) -> Guard:
    """Quantize on ``calib`` (the calibration images); accept by ``score`` against ``fp32_accuracy``."""
    unknown = sorted(set(cfg.keep_float) - set(layers))
    if unknown:
        raise ConfigError(f"quant.keep_float names {unknown}, which are not convs of this model; use names like {layers[-1]}")
    backend = backend_of(cfg)
    images = calib[: cfg.calib_size]
    folders = (workdir / f"candidate_{i}" for i in range(10**6))

    def quantize(method: str, keep: list[str], backend_cfg: QuantConfig = cfg) -> ModelFile:
        out = next(folders)
        out.mkdir(parents=True, exist_ok=True)
        return backend.quantize(fp32, images, method, keep, backend_cfg, out)

    rows: list[dict] = []
    best: Guard | None = None

    def attempt(method: str, keep: list[str]) -> Guard | None:
        """Score one candidate; a Guard when it meets the guard."""
        nonlocal best
        t0 = time.perf_counter()
        candidate = quantize(method, keep)
        accuracy = score(candidate)
        drop = 100 * (fp32_accuracy - accuracy)
        rows.append({"step": len(rows), "method": method, "keep_float": " ".join(keep) or "-", "accuracy": accuracy,
                     "drop_pts": drop, "meets_guard": drop <= cfg.max_drop, "seconds": time.perf_counter() - t0})
        log.info("quant %s/%s keep_float=%s: accuracy %.4f, drop %.2f pts", cfg.backend, method, keep or "-", accuracy, drop)
        if best is None or accuracy > best.row["accuracy"]:
            best = Guard(candidate, rows[-1], False, rows)
        return Guard(candidate, rows[-1], True, rows) if drop <= cfg.max_drop else None

    for method in cfg.methods():
        if found := attempt(method, list(cfg.keep_float)):
            return found
    ranked: list[tuple[str, float]] = []
    if cfg.max_float_layers:
        method = max(rows, key=lambda r: r["accuracy"])["method"]
        plain = replace(cfg, compile=False)  # ranking needs no fast kernels
        ranked = sensitivity(lambda m, k: quantize(m, k, plain), logits, fp32, images, method, layers, list(cfg.keep_float))
        keep = list(cfg.keep_float)
        for layer, _ in ranked[: cfg.max_float_layers]:
            keep.append(layer)
            if found := attempt(method, keep):
                found.sensitivity = ranked
                return found
    best.sensitivity = ranked
    return best
