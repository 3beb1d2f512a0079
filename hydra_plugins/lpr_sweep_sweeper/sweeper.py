"""lpr_sweep's two Hydra sweepers (``hydra/sweeper`` group; Hydra loads plugins only from ``hydra_plugins``).

- ``ListSweeper`` runs an explicit list of jobs, each a list of overrides that may itself sweep
  (``prune.scope=layer,global``). Hydra's basic sweeper only takes one cartesian product, which
  cannot say "these six rows plus a pruning sweep" (``+experiment=published_table``).
- ``OptunaSweeper`` is a multi-objective search on current Optuna (NSGA-II by default, continuous
  ``interval(a, b)`` ranges, an optional persistent study). hydra-optuna-sweeper 1.3 pins optuna<3
  and cannot compose ``interval`` on OmegaConf 2.3 (docs/measured.md). A sampled config that fails
  validation (``quant=nncf`` with ``runtime=onnxruntime``) is told to the study as failed without
  being launched, so only runnable trials count against ``n_trials``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf

log = logging.getLogger(__name__)
SAMPLERS = {"nsga2": "NSGAIISampler", "tpe": "TPESampler", "random": "RandomSampler"}  # optuna.samplers


def search_keys_hint(keys: Sequence[str]) -> str:
    """The line for search settings that reached the list sweeper: an experiment that sets them cannot
    also pick the sweeper, since conf/config.yaml's choice of it wins."""
    return (f"hydra.sweeper.{', '.join(sorted(keys))} belong to the search sweeper; add hydra/sweeper=search to the command "
            "line (e.g. python -m lpr_sweep +experiment=stage_search hydra/sweeper=search)")


class ListSweeper(BasicSweeper):
    KEYS = ("_target_", "jobs", "max_batch_size")

    def __init__(self, jobs: Sequence[Sequence[str]], max_batch_size: int | None = None, **search: Any):
        if search:
            raise ValueError(search_keys_hint(list(search)))
        super().__init__(max_batch_size=max_batch_size, params=None)
        self.jobs = [list(job) for job in jobs]

    def split_arguments(self, overrides: list[Override], max_batch_size: int | None) -> list[list[list[str]]]:
        from lpr_sweep.config import expand, named  # imported late: Hydra imports every plugin at start-up

        arguments = [o.input_line for o in overrides if o.input_line]
        return list(self.split_overrides_to_chunks(named(expand(arguments, self.jobs)), max_batch_size))


def distribution(override: Override) -> Any:
    """An Optuna distribution from Hydra's sweep grammar: choice(...), range(...), interval(a, b), tag(log, interval(...))."""
    import optuna.distributions as d

    value = override.value()
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return d.CategoricalDistribution(list(override.sweep_iterator()))
    if isinstance(value, IntervalSweep):  # Hydra parses interval bounds as floats; integers go through range()
        return d.FloatDistribution(value.start, value.end, log="log" in value.tags)
    raise ValueError(f"{override.input_line}: a search dimension must be choice(...), range(...) or interval(a, b)")


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        params: dict[str, str],
        objectives: Sequence[str],
        directions: Sequence[str],
        n_trials: int,
        n_jobs: int = 1,
        sampler: str = "nsga2",
        seed: int = 0,
        storage: str | None = None,
        study_name: str = "lpr_sweep",
        max_invalid: int = 200,
    ):
        if len(objectives) != len(directions):
            raise ValueError(f"{len(objectives)} objectives but {len(directions)} directions; give one direction each")
        if n_trials < 1 or n_jobs < 1:
            raise ValueError("hydra.sweeper.n_trials and n_jobs must be >= 1")
        self.params = {k: v for k, v in (params or {}).items() if v is not None}  # null takes a key out of the space
        self.objectives, self.directions = list(objectives), list(directions)
        self.n_trials, self.n_jobs, self.max_invalid = n_trials, n_jobs, max_invalid
        self.sampler, self.seed, self.storage, self.study_name = sampler, seed, storage, study_name

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _study(self):
        import optuna

        if self.sampler not in SAMPLERS:
            raise ValueError(f"hydra.sweeper.sampler={self.sampler!r} is unknown; use one of {sorted(SAMPLERS)}")
        return optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=getattr(optuna.samplers, SAMPLERS[self.sampler])(seed=self.seed),
            directions=self.directions, load_if_exists=self.storage is not None,
        )

    def _valid(self, overrides: list[str]) -> str | None:
        """None when the trial's config validates, else the one-line reason."""
        from hydra import compose

        from lpr_sweep import ConfigError, config

        try:
            config.validate(compose(self.config.hydra.job.config_name, overrides=overrides))
        except ConfigError as e:
            return str(e)
        return None

    def sweep(self, arguments: list[str]) -> list[dict[str, Any]]:
        import optuna

        from lpr_sweep.config import quoted

        parser = OverridesParser.create()
        space = {}
        fixed = []
        for o in parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments)):
            if o.is_sweep_override():
                space[o.get_key_element()] = distribution(o)
            else:  # a fixed value on the command line takes its key out of the search
                space.pop(o.get_key_element(), None)
                fixed.append(o.input_line)
        study = self._study()
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        launched, invalid, results = 0, 0, []
        while launched < self.n_trials:
            batch = []
            while len(batch) < min(self.n_jobs, self.n_trials - launched):
                trial = study.ask(space)
                overrides = fixed + [f"{k}={v}" for k, v in trial.params.items()]
                # the sampled values with the last part of their key: block3=0.93, runtime=openvino
                name = " ".join(f"{k.rsplit('.', 1)[-1]}=" + (f"{v:.3g}" if isinstance(v, float) else str(v)) for k, v in trial.params.items())
                reason = self._valid(overrides)
                if reason is None:
                    batch.append((trial, overrides + [f"tracking.run_name={quoted(name)}"]))
                    continue
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                invalid += 1
                log.info("skipped an invalid sample (%s): %s", " ".join(overrides), reason)
                if invalid > self.max_invalid:
                    raise RuntimeError(f"{invalid} sampled configs were invalid; narrow hydra.sweeper.params")
            for (trial, overrides), ret in zip(batch, self.launcher.launch([o for _, o in batch], launched)):
                values = self._values(ret)
                if values is None:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                else:
                    study.tell(trial, values)
                results.append({"overrides": overrides, "values": values})
            launched += len(batch)
        front = [{"params": t.params, "values": t.values} for t in study.best_trials]
        OmegaConf.save(OmegaConf.create({"objectives": self.objectives, "directions": self.directions,
                                         "pareto_front": front, "invalid_samples": invalid}),
                       sweep_dir / "optimization_results.yaml")
        log.info("%d trials, %d on the Pareto front (%s)", launched, len(front), sweep_dir / "optimization_results.yaml")
        return results

    def _values(self, ret: Any) -> list[float] | None:
        try:
            metrics = ret.return_value  # raises the job's exception when it failed
            return [float(metrics[k]) for k in self.objectives]
        except Exception as e:  # a failed trial is recorded in MLflow; the study goes on
            log.warning("trial gave no %s: %s", "/".join(self.objectives), e)
            return None
