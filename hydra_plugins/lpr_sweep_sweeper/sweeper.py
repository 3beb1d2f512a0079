"""lpr_sweep's three Hydra sweepers (``hydra/sweeper`` group; Hydra loads plugins only from ``hydra_plugins``).

- ``ListSweeper`` runs an explicit list of jobs, each a list of overrides that may itself sweep
  (``prune.scope=layer,global``). Hydra's basic sweeper only takes one cartesian product, which
  cannot say "these six rows plus a pruning sweep" (``+experiment=published_table``).
- ``OptunaSweeper`` is a multi-objective search on current Optuna (NSGA-II by default, continuous
  ``interval(a, b)`` ranges, an optional persistent study). hydra-optuna-sweeper 1.3 pins optuna<3
  and cannot compose ``interval`` on OmegaConf 2.3 (docs/measured.md). A sampled config that fails
  validation (``quant=nncf`` with ``runtime=onnxruntime``) is told to the study as failed without
  being launched, so only runnable trials count against ``n_trials``.
- ``GreedySweeper`` is a NetAdapt-style latency-aware greedy over LPRNet's per-stage pruning
  ratios (``+experiment=netadapt``): from a start, each iteration proposes pruning more of every
  stage whose convolutions hold a real share of the current model's profiled time, runs the
  proposals as trials, times the current model and the proposals side by side in one process (the
  report's final, on their logged MLflow Models), and keeps, among those that are faster and within
  the accuracy budget, the best by the report's tie order (validation accuracy judged by the
  pessimistic end of its drop interval); it stops when none is.
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


GREEDY_KEYS = {"start", "step", "min_share", "max_drop_pts", "iterations"}


def search_keys_hint(keys: Sequence[str]) -> str:
    """The line for another sweeper's settings that reached the list sweeper: an experiment that sets
    them cannot also pick the sweeper, since conf/config.yaml's choice of it wins."""
    name, experiment = ("greedy", "netadapt") if set(keys) <= GREEDY_KEYS and "params" not in keys and "n_trials" not in keys \
        else ("search", "stage_search")
    return (f"hydra.sweeper.{', '.join(sorted(keys))} belong to the {name} sweeper; add hydra/sweeper={name} to the command "
            f"line (e.g. python -m lpr_sweep +experiment={experiment} hydra/sweeper={name})")


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


def speed(m: dict) -> dict:
    """A speed-up as greedy_results.yaml writes it: the point and its 95 % interval, labelled."""
    return {"x": m["speedup"], "ci95": [m["speedup_ci_low"], m["speedup_ci_high"]]}


def prune_more(ratio: float, step: float) -> float:
    """The ratio after pruning ``step`` of what a stage still keeps (0.9 and 0.2: 0.92), below 0.99."""
    return round(min(ratio + step * (1.0 - ratio), 0.99), 4)


def shares(metrics: dict[str, float], stages: Sequence[str]) -> dict[str, float]:
    """Each stage's share of the profiled conv time (``profile_us_<stage>``); {} without a profile by stage."""
    us = {s: float(metrics.get(f"profile_us_{s}", 0.0)) for s in stages}
    total = sum(us.values())
    return {s: v / total for s, v in us.items()} if total > 0 else {}


def choose(current: dict[str, float], proposals: dict[str, dict[str, float] | None], floor: float) -> str | None:
    """NetAdapt's pick: among the proposals that are faster than ``current`` as the report judges it
    (``selection.faster``: beyond the intervals and by more than ``selection.MIN_GAIN``) and keep
    validation accuracy at or above ``floor``, the best by the report's tie order (``selection.better``:
    the pessimistic end of the validation drop's interval first, so one plate of 200 does not decide);
    None when none qualifies."""
    from lpr_sweep.selection import Trial, better, faster

    def trial(name: str, m: dict) -> Trial:
        return Trial("", name, "FINISHED", {k: v for k, v in m.items() if isinstance(v, (int, float))})

    pick = None
    for s, m in proposals.items():
        t = trial(s, m) if m else None
        if t and faster(t, trial("current", current)) and m["val_accuracy"] >= floor and (pick is None or better(t, pick)):
            pick = t
    return pick.name if pick else None


class GreedySweeper(Sweeper):
    def __init__(self, start: dict[str, float], step: float = 0.2, min_share: float = 0.1, max_drop_pts: float = 0.5,
                 iterations: int = 3):
        from lpr_sweep.prune import STAGES

        if unknown := set(start) - set(STAGES):
            raise ValueError(f"hydra.sweeper.start names {sorted(unknown)}, not stages of LPRNet; use {', '.join(STAGES)}")
        if not start:
            raise ValueError("hydra.sweeper.start names no stage; give at least one, e.g. +hydra.sweeper.start={block3: 0.9}")
        if bad := {s: r for s, r in start.items() if not 0.0 <= r < 1.0}:
            raise ValueError(f"hydra.sweeper.start gives {bad}; every stage's ratio must be in [0, 1)")
        for key, value, ok, rule in (("step", step, 0.0 < step < 1.0, "in (0, 1)"), ("iterations", iterations, iterations >= 1, ">= 1"),
                                     ("max_drop_pts", max_drop_pts, max_drop_pts >= 0, ">= 0"),
                                     ("min_share", min_share, 0.0 <= min_share < 1.0, "in [0, 1)")):
            if not ok:
                raise ValueError(f"hydra.sweeper.{key}={value} must be {rule}")
        self.start, self.step, self.min_share = {k: float(v) for k, v in start.items()}, step, min_share
        self.max_drop_pts, self.iterations = max_drop_pts, iterations
        self.last_error = ""

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def _launch(self, jobs: dict[str, dict[str, float]], fixed: list[str], index: int, tag: str) -> dict[str, dict | None]:
        from lpr_sweep.config import quoted

        names = list(jobs)
        overrides = [fixed + [f"prune.stages.{s}={r}" for s, r in jobs[n].items()] + [f"tracking.run_name={quoted(f'{tag} {n}')}"]
                     for n in names]
        out = {}
        for n, ret in zip(names, self.launcher.launch(overrides, index)):
            try:
                out[n] = {**ret.return_value, "run_name": f"{tag} {n}"}  # raises the job's exception when it failed
            except Exception as e:  # a failed trial is recorded in MLflow; the greedy goes on without it
                log.warning("greedy: %s gave no result: %s: %s", n, type(e).__name__, e)
                out[n] = None
                self.last_error = f"{type(e).__name__}: {e}"
        return out

    def sweep(self, arguments: list[str]) -> list[dict[str, Any]]:
        parser = OverridesParser.create()
        if sweeps := [o.input_line for o in parser.parse_overrides(list(arguments)) if o.is_sweep_override()]:
            raise ValueError(f"the greedy sweeper decides the stage ratios itself; drop the sweep {' '.join(sweeps)}")
        fixed = [o.input_line for o in parser.parse_overrides(list(arguments))]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        ratios = dict(self.start)
        current = self._launch({"start": ratios}, fixed, 0, "greedy 0")["start"]
        if current is None:
            raise RuntimeError(f"greedy: the start trial failed ({self.last_error}); nothing to improve on")
        if "val_accuracy" not in current:
            raise RuntimeError("greedy: the start trial has no val_accuracy: the greedy decides on validation plates; set data.val_size > 0")
        floor = current["val_accuracy"] - self.max_drop_pts / 100
        history, launched = [], 1

        def save(final: dict[str, float]) -> None:  # after every iteration: an interrupted greedy keeps its steps
            OmegaConf.save(OmegaConf.create({"start": self.start, "step": self.step, "min_share": self.min_share,
                                             "max_drop_pts": self.max_drop_pts, "val_accuracy_floor": floor, "iterations": history,
                                             "final": final}), sweep_dir / "greedy_results.yaml")

        for it in range(1, self.iterations + 1):
            share = shares(current, list(ratios))
            stages = [s for s in ratios if ratios[s] < 0.99 and (not share or share[s] >= self.min_share)]
            proposals = {f"{s}={prune_more(ratios[s], self.step)}": {**ratios, s: prune_more(ratios[s], self.step)} for s in stages}
            results = self._launch(proposals, fixed, launched, f"greedy {it}")
            launched += len(proposals)
            timing = self._side_by_side(current, results, sweep_dir)
            pick = choose(current, results, floor)
            history.append({"iteration": it, "from": dict(ratios), "conv_time_share": {s: round(v, 3) for s, v in share.items()},
                            "timing": timing, "current_speedup": speed(current),
                            "current_noisy": bool(current.get("bench_noisy", 0)),
                            "proposals": {p: None if m is None else {"val_accuracy": m["val_accuracy"],
                                                                     "val_drop_pts_ci_high": m.get("val_drop_pts_ci_high"),
                                                                     "speedup": speed(m),
                                                                     "noisy": bool(m.get("bench_noisy", 0)),
                                                                     "trial_speedup": m.get("trial_speedup", m["speedup"]),
                                                                     "trial_noisy": bool(m.get("trial_noisy", m.get("bench_noisy", 0)))}
                                          for p, m in results.items()}, "picked": pick})
            log.info("greedy %d: %s", it, f"picked {pick}" if pick else "no proposal is faster within the accuracy budget; stopping")
            if pick is not None:
                ratios, current = proposals[pick], results[pick]
            save(ratios)
            if pick is None:
                break
        log.info("greedy: %d trials; final stage ratios %s (%s)", launched, ratios, sweep_dir / "greedy_results.yaml")
        return history

    def _side_by_side(self, current: dict, results: dict[str, dict | None], sweep_dir: Path) -> str:
        """Put the speed-ups of the current model and the proposals, timed together in this process
        (``lpr_sweep.final``, on their logged MLflow Models), in place of each trial's own; a trial
        timed in its own process minutes apart moves by 10 % and more with the host. Returns how
        they were timed; when the final cannot run, the trials' own speed-ups stay and it says so."""
        from lpr_sweep import decision, final
        from lpr_sweep.tracking import PARENT_FILE, TrackingConfig

        todo = {m["run_name"]: m for m in [current, *results.values()] if m is not None}
        try:
            cfg = TrackingConfig(**OmegaConf.to_container(self.config.tracking, resolve=True))
            trials = [t for t in decision.load(cfg, (sweep_dir / PARENT_FILE).read_text().strip()).trials if t.name in todo]
            if len(trials) != len(todo):
                raise LookupError(f"found {len(trials)} of the {len(todo)} trials in MLflow")
            timed, _ = final.run(trials)
        except Exception as e:  # the decision then rests on the trials' own timings: say so
            log.warning("greedy: could not time the candidates side by side (%s: %s); using each trial's own speed-up",
                        type(e).__name__, e)
            return "each trial's own process"
        for t in timed:
            m = todo[t.name]
            m.setdefault("trial_speedup", m["speedup"])  # the trial's own timing, kept beside the side-by-side one
            m.setdefault("trial_noisy", m.get("bench_noisy", 0))
            m.update({k: t.metrics[k] for k in final.FINAL_KEYS if k in t.metrics})
        return "side by side in one process (lpr_sweep.final)"
