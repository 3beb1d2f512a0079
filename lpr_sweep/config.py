"""The typed schema behind conf/: each stage owns its group's dataclass, this file assembles them.

Types are checked when Hydra composes (``prune.ratio=abc`` fails there); ranges are checked by each
dataclass's ``__post_init__`` in ``validate``, before a trial does any work.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lpr_sweep import ConfigError, data, runtime
from lpr_sweep.benchmark import BenchmarkConfig
from lpr_sweep.cache import CacheConfig
from lpr_sweep.compile import CompileConfig
from lpr_sweep.data import DataConfig
from lpr_sweep.evaluate import EvaluateConfig
from lpr_sweep.finetune import FinetuneConfig, check_data
from lpr_sweep.hardware import HardwareConfig
from lpr_sweep.model import ModelConfig
from lpr_sweep.profile import ProfileConfig
from lpr_sweep.prune import PruneConfig
from lpr_sweep.quant import QuantConfig, check_pairing
from lpr_sweep.runtime import RuntimeConfig
from lpr_sweep.tracking import TrackingConfig

SCHEMA = "lpr_sweep_schema"


@dataclass
class OptimizationConfig:
    name: str = "baseline"  # the preset's name, used for run names and the report


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    resume: bool = False  # skip trials whose config already has a FINISHED run in the experiment

    def __post_init__(self):
        check_data(self.finetune, self.data.calib_size)
        check_pairing(self.quant, self.runtime.name, self.data.calib_size, self.data.val_size)
        runtime.check(self)  # what the runtime's class declares it cannot run


def register() -> None:
    ConfigStore.instance().store(name=SCHEMA, node=Config)


def validate(cfg: DictConfig) -> Config:
    """Typed config with every range checked, or a one-line ConfigError."""
    try:
        conf = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        raise ConfigError(str(e).splitlines()[0]) from e
    if unknown := _unknown(conf):
        raise ConfigError(unknown)
    return conf


def preflight(conf: Config) -> None:
    """What a trial would otherwise find out only inside its MLflow run, left FAILED: the data root and
    its checksums, the weights file, enough plates for the splits. Cheap: the files are hashed (small
    plates and a 1 MB weights file), no image is decoded. (A TVM target LLVM does not know is the
    runtime's check.)"""
    root = data.resolve_root(conf.data.root)
    if conf.data.verify_checksums:
        data.verify(root)
    weights = conf.model.file(root)
    if not weights.is_file():
        raise data.DataError(f"model.weights={conf.model.weights} is {weights}, which does not exist; point "
                             "model.weights at LPRNet's .pth (relative to data.root, or absolute), or run `python -m lpr_sweep.download`")
    data.split([f for f in data.read_manifest(root / data.MANIFEST) if f.startswith("images/")],
               conf.data.calib_size, conf.data.seed, conf.data.val_size)


def _unknown(obj: Any, prefix: str = "") -> str | None:
    """The first key that a ``+key=value`` override added but no stage reads, with the nearest known key:
    Hydra accepts ``+prune.ration=0.5`` (and suggests it for a typo), and the trial would run unpruned."""
    known = {f.name for f in fields(obj)}
    for key, value in vars(obj).items():
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean {prefix}{near[0]}?" if near else f"{prefix.rstrip('.') or 'the config'} has {', '.join(sorted(known))}"
            return f"{prefix}{key} is not a setting ({hint}); fix or drop that override"
        if is_dataclass(value) and (found := _unknown(value, f"{prefix}{key}.")):
            return found
    return None



def expand(arguments: Sequence[str], jobs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Every job's overrides after the command line's (the job's win), each job's sweeps expanded."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    [base] = BasicSweeper.split_arguments(parser.parse_overrides(list(arguments)), None)
    out = []
    for job in jobs or [[]]:
        [expanded] = BasicSweeper.split_arguments(parser.parse_overrides(list(job)), None)
        out += [b + e for b in base for e in expanded]
    return out


def named(jobs: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each job with ``tracking.run_name``: the values of the keys that vary across the jobs
    (``0.9 global``), short enough for a runs-table column and a chart legend. The full overrides
    stay in the run's params and its ``lpr_sweep.overrides`` tag."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = [{o.get_key_element(): str(o.value()) for o in parser.parse_overrides(list(job))} for job in jobs]
    keys = [k for k in dict.fromkeys(k for job in parsed for k in job)
            if len({job.get(k) for job in parsed}) > 1 and not k.startswith("tracking.")]
    if not keys:
        return [list(job) for job in jobs]
    names = [" ".join(job[k] for k in keys if k in job) or "default" for job in parsed]
    return [[*job, f"tracking.run_name={quoted(name)}"] for job, name in zip(jobs, names)]


def quoted(value: str) -> str:
    """A Hydra override value that stays one string whatever it holds (spaces, commas, quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _composes(config_name: str, overrides: list[str]) -> str | None:
    """None when the overrides compose into a config (ranges aside), else the one-line reason."""
    from hydra import compose
    from hydra.errors import HydraException

    try:
        compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        return str(e).strip().splitlines()[0]
    return None


def check_search(config: DictConfig) -> None:
    """The search sweeper's settings and every value it may sample, before anything is recorded: its
    counts, each dimension's grammar and bounds, and each choice and interval end composing on its own.
    A sample that composes but fails a cross-check (``quant=nncf`` with ``runtime=onnxruntime``) is
    still fine here: the sweeper skips such samples. ConfigError with the reason."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    from hydra_plugins.lpr_sweep_sweeper.sweeper import SAMPLERS, distribution

    sweeper = config.hydra.sweeper
    for key in ("n_trials", "n_jobs"):
        if int(sweeper.get(key, 1)) < 1:
            raise ConfigError(f"hydra.sweeper.{key}={sweeper.get(key)} must be >= 1")
    if len(sweeper.objectives) != len(sweeper.directions):
        raise ConfigError(f"{len(sweeper.objectives)} objectives but {len(sweeper.directions)} directions; give one direction each")
    if any(d not in ("minimize", "maximize") for d in sweeper.directions):
        raise ConfigError(f"hydra.sweeper.directions={list(sweeper.directions)}: each must be minimize or maximize")
    if sweeper.sampler not in SAMPLERS:
        raise ConfigError(f"hydra.sweeper.sampler={sweeper.sampler!r} is unknown; use one of {sorted(SAMPLERS)}")
    parser = OverridesParser.create()
    task = [o for o in parser.parse_overrides(list(config.hydra.overrides.task))]
    fixed = [o.input_line for o in task if not o.is_sweep_override()]
    lines = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items() if v is not None] + [o.input_line for o in task if o.is_sweep_override()]
    for override in parser.parse_overrides(lines):
        key = override.get_key_element()
        if key in {o.get_key_element() for o in task if not o.is_sweep_override()}:
            continue  # a fixed value on the command line takes its key out of the search
        value = override.value()
        # before distribution(): Optuna's own message for a backwards interval names no override
        if isinstance(value, IntervalSweep) and not value.start < value.end:
            raise ConfigError(f"{override.input_line}: interval(a, b) needs a < b; write interval({value.end:g}, {value.start:g})")
        try:
            distribution(override)
        except ValueError as e:
            raise ConfigError(str(e).splitlines()[0]) from None
        if isinstance(value, IntervalSweep):
            samples = [value.start, value.end]
        else:
            samples = list(override.sweep_iterator())
        for sample in samples:
            reason = _composes(config.hydra.job.config_name, fixed + [f"{key}={sample}"])
            if reason:
                raise ConfigError(f"search dimension {override.input_line}: {key}={sample} cannot be composed: {reason}")


def _writable(folder: str, key: str) -> None:
    """Create the output folder now, so that a bad one is one line and not Hydra's traceback."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = Path(folder) / ".lpr_sweep_write_test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: {key}={folder} cannot be written ({e.strerror}); point {key} at a writable folder") from None


class ValidateSweep(Callback):
    """Compose and validate every job of a multirun before the first one starts, and before the
    sweep's parent run exists (this callback is listed before the MLflow one).

    Without it, ``-m prune.ratio=0.1,0.5,1.5`` would spend two trials before refusing the third, and a
    typo in a list value would leave an empty parent run behind. A search sweep's settings and every
    value it may sample are checked (``check_search``). It exits rather than raises: Hydra turns a
    callback's exception into a warning and goes on.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _writable(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose
        from hydra.errors import HydraException

        _writable(config.hydra.sweep.dir, "hydra.sweep.dir")
        sweeper = config.hydra.sweeper
        if sweeper._target_.endswith(".ListSweeper"):
            from hydra_plugins.lpr_sweep_sweeper.sweeper import ListSweeper, search_keys_hint

            if extra := [k for k in sweeper if k not in ListSweeper.KEYS]:
                raise SystemExit(f"error: {search_keys_hint(extra)}")
        if "jobs" not in sweeper and not sweeper._target_.endswith(".BasicSweeper"):
            if sweeper._target_.endswith(".OptunaSweeper"):
                try:
                    check_search(config)
                except ConfigError as e:
                    raise SystemExit(f"error: {e}") from None
            if sweeper._target_.endswith(".GreedySweeper"):  # its settings, before the sweep's parent run exists
                from hydra_plugins.lpr_sweep_sweeper.sweeper import GreedySweeper

                try:
                    GreedySweeper(**{k: v for k, v in OmegaConf.to_container(sweeper, resolve=True).items() if k != "_target_"})
                except (ValueError, TypeError) as e:
                    raise SystemExit(f"error: {e}") from None
            return
        from lpr_sweep import DataError, hardware

        # Jobs that run here need their device and data here; on Ray or SLURM only the workers' count.
        local = not any(k in str(config.hydra.launcher.get("_target_", "")).lower() for k in ("ray", "submitit"))
        for overrides in expand(list(config.hydra.overrides.task), sweeper.get("jobs") or []):
            try:
                conf = validate(compose(config.hydra.job.config_name, overrides=overrides))
                if local:
                    hardware.check(conf.hardware)
                    preflight(conf)
            except (ConfigError, DataError) as e:
                raise SystemExit(f"error: job [{' '.join(overrides)}]: {e}") from None
            except (HydraException, OmegaConfBaseException) as e:
                raise SystemExit(f"error: job [{' '.join(overrides)}]: {str(e).strip().splitlines()[0]}") from None


register()
