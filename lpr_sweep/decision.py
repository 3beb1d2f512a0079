"""The champion decision: which trial of a sweep wins under a rule, and what the registry records.

1. Only comparable trials take part (``selection.comparable``); the others carry the reason.
2. Finalists: the admitted trials no admitted trial beats beyond the margin, the Pareto front, and
   the incumbent champion when it is comparable.
3. A timer (``lpr_sweep.final.run``) times them side by side; the rule decides on those ratios.
4. The promotion gate: ``champion`` moves only when the winner beats the incumbent under the same
   rule; otherwise the winner becomes ``challenger``. A sweep registers one version at most.

``load`` reads a sweep back from MLflow and ``add_rule_arguments`` / ``rule_of`` turn command-line
flags into a rule. ``lpr_sweep.report`` renders a decision; ``lpr_sweep.best`` prints one without
recording it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpr_sweep import selection, tracking
from lpr_sweep.selection import OBJECTIVES, Rule, Trial, closest, select
from lpr_sweep.tracking import deploy, registry

log = logging.getLogger(__name__)
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"  # the latest sweep's winner when it did not beat the champion
REGISTRY_TAGS = ("accuracy", "val_accuracy", "drop_pts", "speedup", "speedup_ci_low", "speedup_ci_high",
                 "latency_p50_ms", "latency_ref_p50_ms", "size_file_bytes")


@dataclass
class Sweep:
    """A sweep as read back from MLflow (``load``): what a decision is made on."""

    parent_id: str
    sweep_dir: Path | None
    trials: list[Trial]
    notes: list[str] = field(default_factory=list)  # trials of earlier sweeps it resumed from, left out
    unfinished: str = ""  # why the sweep is not over (still running, or killed before its end); "" when it is


def trial_of(run: Any) -> Trial:
    return Trial(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.metrics), dict(run.data.params),
                 run.data.tags.get("error", ""), dict(run.data.tags))


def load(cfg: tracking.TrackingConfig, sweep: str = "latest") -> Sweep:
    """A sweep's trials from MLflow; ``sweep`` is a parent run id or ``latest``. LookupError if none."""
    parent_id, sweep_dir, runs, skipped = registry.read_sweep(cfg, sweep)
    if skipped:
        print(f"note: skipped {len(skipped)} newer sweep(s) that hold no trial ({', '.join(skipped)}); reporting {parent_id}",
              file=sys.stderr)
    trials = [trial_of(r) for r in runs]
    earlier = {t.tags.get("mlflow.parentRunId") for t in trials} - {parent_id, None}
    notes, hashes = [], {t.tags.get(tracking.HASH_TAG) for t in trials}
    for t in trials:
        if t.tags.get("mlflow.parentRunId") != parent_id:
            t.name += f" (reused from sweep {t.tags.get('mlflow.parentRunId', '?')[:8]})"
    for other in sorted(earlier):  # what the earlier sweep ran that this one no longer asks for
        left = [r.info.run_name for r in registry.read_sweep(cfg, other)[2] if r.data.tags.get(tracking.HASH_TAG) not in hashes]
        if left:
            notes.append(f"sweep {other} also ran {', '.join(left)}: not asked for by this sweep, so not part of its decision")
    return Sweep(parent_id, Path(sweep_dir) if sweep_dir else None, trials, notes, unfinished(parent_id, trials))


def unfinished(parent_id: str, trials: list[Trial]) -> str:
    """Why a sweep's decision would be premature: its process still runs, or it died with trials
    RUNNING (killed, never closed). "" when the sweep ended."""
    from mlflow import MlflowClient

    from lpr_sweep.tracking import sweep as sweep_lock

    running = [t.name for t in trials if t.status == "RUNNING"]
    status = MlflowClient().get_run(parent_id).info.status
    if status != "RUNNING" and not running:
        return ""
    held = sweep_lock.owner(parent_id)
    if held:
        return f"sweep {parent_id} is still running ({held}); report it when it ends"
    return (f"sweep {parent_id} stopped before its end (parent {status}, {len(running)} trial(s) left RUNNING: "
            f"{', '.join(running[:5]) or 'none'}); finish it with the same command and resume=true, then report")


@dataclass
class Decision:
    """What the report decided, and on which numbers."""

    champion: Trial | None  # this sweep's best under the rule (its final's metrics when the final ran)
    note: str
    excluded: dict[str, str] = field(default_factory=dict)  # run id -> why it is not comparable
    finalists: list[Trial] = field(default_factory=list)  # with the final's metrics when it ran
    final_protocol: dict[str, str] | None = None
    decided_on: str = "each trial's own paired speed-up, timed in its own process"
    incumbent: Trial | None = None  # the registered champion when this report began (final's metrics if timed)
    incumbent_version: str = ""
    incumbent_reason: str = ""  # why the incumbent cannot be compared ("" when it can)
    promote: bool = True
    why: str = "no champion was registered yet"
    registry: str = ""


def _readable(key: str, value: float) -> str:
    """A tag a person reads: bytes whole, ratios to 2 decimals, accuracies to 4."""
    if key.endswith("_bytes"):
        return str(int(round(value)))
    return f"{value:.2f}" if key.startswith(("speedup", "latency", "drop")) else f"{value:.4f}"


def register(decision: Decision, rule: Rule, sweep: Sweep, model_name: str, force: bool = False) -> tuple[str, bool]:
    """Register the sweep's champion (once per sweep) and move an alias: ``champion`` when the gate
    lets it through (or ``force``), else ``challenger``. (a line for the report, whether it registered)."""
    champion = decision.champion
    source = champion.tags.get(tracking.MODEL_TAG)
    if not source:
        raise LookupError(f"trial {champion.name} (run {champion.run_id}) logged no MLflow Model (it predates them); "
                          "rerun it with `resume=false` to log one")
    registry.check_model_files(source)
    earlier = registry.sweep_version(model_name, sweep.parent_id)
    if earlier is not None and earlier.tags.get(registry.TRIAL_RUN_TAG) == champion.run_id:
        version, note = str(earlier.version), f"version {earlier.version} (registered by an earlier report of this sweep)"
    elif earlier is not None and not force:
        return (f"nothing registered: this sweep already registered version {earlier.version} (trial "
                f"{earlier.tags.get('trial', '?')}), and a sweep registers one version; --promote registers {champion.name} "
                "anyway"), False
    else:
        m, p = champion.metrics, champion.params
        description = (
            f"Trial {champion.name} (run {champion.run_id}) of sweep {sweep.parent_id}, under: {rule}. Speed-up {m['speedup']:.2f}x "
            f"[{m['speedup_ci_low']:.2f}, {m['speedup_ci_high']:.2f}] over {p.get('protocol.reference', 'the reference')} "
            f"({decision.decided_on.split(':')[0]}), {p.get('protocol.threads', '?')} threads, batch 1; accuracy {m['accuracy']:.4f} "
            f"on {p.get('protocol.n_scored', '?')} scored plates (chosen on {p.get('protocol.n_val', '?')} validation plates). "
            f"Input: {deploy.INPUT}."
        )
        tags = {"rule": str(rule), "trial": champion.name, registry.SWEEP_RUN_TAG: sweep.parent_id,
                registry.TRIAL_RUN_TAG: champion.run_id, **{k: _readable(k, m[k]) for k in REGISTRY_TAGS if k in m}}
        version = registry.register_model(source, model_name, tags, description)
        note = f"version {version}"
    if decision.promote or force:
        registry.set_champion(model_name, CHAMPION_ALIAS, version)
        why = "forced by --promote" if force and not decision.promote else decision.why
        line = f"{model_name} {note} is now '{CHAMPION_ALIAS}' ({why})"
        registry.describe(model_name, f"Champion: version {version}, trial {champion.name} of sweep {sweep.parent_id}. Why: "
                                      f"{why}. Rule: {rule}.", {"champion_version": version, "champion_trial": champion.name})
    elif version == decision.incumbent_version:
        line = f"champion v{version} holds ({decision.why})"
    else:
        registry.set_champion(model_name, CHALLENGER_ALIAS, version)
        line = (f"kept champion v{decision.incumbent_version} ({decision.why}); {model_name} {note} is '{CHALLENGER_ALIAS}'; "
                "--promote moves the champion alias to it anyway")
        registry.describe(model_name, f"Champion: version {decision.incumbent_version}, trial {decision.incumbent.name if decision.incumbent else '?'}. "
                                      f"It held against version {version} ({champion.name}, sweep {sweep.parent_id}): "
                                      f"{decision.why}. Rule: {rule}.", {"challenger_version": version})
    return line, True


def _account(champion: Trial, among: list[Trial], rule: Rule) -> str:
    m = champion.metrics
    tied = [t.name for t in among if t.run_id != champion.run_id and rule.admits(t)
            and selection.tied_on_speed(champion, t, rule.min_gain)]
    return (f"{champion.name} (run {champion.run_id}): speed-up {m['speedup']:.2f}x [{m['speedup_ci_low']:.2f}, "
            f"{m['speedup_ci_high']:.2f}], validation accuracy {m['val_accuracy']:.4f}, scored accuracy {m['accuracy']:.4f}"
            + (f"; tied on speed with {', '.join(tied[:3])}{f' and {len(tied) - 3} more' if len(tied) > 3 else ''}, "
               "chosen by the tie rule" if tied else ""))


def choose(sweep: Sweep, rule: Rule) -> tuple[Trial | None, str]:
    """The champion on the trials' own ratios, among comparable trials, and a one-line account of the
    choice (which names the closest run on a miss)."""
    _, excluded = selection.comparable(sweep.trials)
    ranked = [t for t in sweep.trials if t.run_id not in excluded]
    champion = select(ranked, rule)
    if champion is not None:
        return champion, _account(champion, ranked, rule)
    near = closest(ranked, rule)
    if near is None:
        return None, ("none: no comparable trial finished with the metrics a decision needs (paired speed-up and validation "
                      "accuracy, no error recorded; a sweep with data.val_size=0 cannot decide without reading the scored plates)")
    misses = ", ".join(f"{k} over by {v:.3g}" for k, v in rule.excess(near).items() if v > 0)
    return None, f"none: no trial satisfies the rule; closest is {near.name} (run {near.run_id}): {misses}; nothing registered"


Timer = Any  # finalists -> (finalists with the final's metrics, the final's protocol); lpr_sweep.final.run


def decide(sweep: Sweep, rule: Rule, incumbent: tuple[str, Trial | None] | None = None, cap: int = selection.FINALISTS,
           timer: Timer | None = None) -> Decision:
    """The sweep's champion under ``rule``: comparable trials only, finalists timed side by side by
    ``timer`` (None: on their own ratios), and whether it beats the registered ``incumbent`` (version, trial)."""
    key, excluded = selection.comparable(sweep.trials)
    in_trial, note = choose(sweep, rule)
    decision = Decision(in_trial, note, excluded)
    inc = None
    if incumbent is not None:
        decision.incumbent_version, inc = incumbent
        if inc is None:
            decision.incumbent_reason = "its trial run is gone from the store"
        else:
            inc = next((t for t in sweep.trials if t.run_id == inc.run_id), inc)
            decision.incumbent_reason = excluded.get(inc.run_id, "") or selection.differs(inc, key)
    if in_trial is None:
        return decision
    ranked = [t for t in sweep.trials if t.run_id not in excluded]
    comparable_inc = inc if inc is not None and not decision.incumbent_reason else None
    fins = selection.finalists(ranked, rule, comparable_inc, cap)
    decision.finalists = fins
    if timer is not None and len(fins) > 1:
        try:
            fins, decision.final_protocol = timer(fins)
            decision.finalists = fins
            decision.decided_on = (f"the final: {len(fins)} finalists' logged models timed side by side with the reference in "
                                   "one process (the trials' own ratios only chose the finalists)")
        except Exception as e:  # the trials' own numbers still decide; say so
            log.warning("the final failed: %s", e)
            decision.decided_on = (f"each trial's own paired speed-up: the final failed ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0][:200] if str(e) else ''})")
    elif timer is not None:
        decision.decided_on = "each trial's own paired speed-up (one finalist: nothing to time side by side)"
    else:
        decision.decided_on = "each trial's own paired speed-up, timed in its own process (--no-final)"
    timed_inc = next((t for t in fins if comparable_inc is not None and t.run_id == comparable_inc.run_id), None)
    own = [t for t in fins if t is not timed_inc or t.run_id in {r.run_id for r in ranked}]
    decision.champion = selection.best(own, rule.objective, rule.min_gain)
    decision.note = _account(decision.champion, own, rule)
    decision.incumbent = timed_inc or inc
    if incumbent is None:
        decision.promote, decision.why = True, "no champion was registered yet"
    elif inc is None or decision.incumbent_reason:
        decision.promote = False
        decision.why = (f"the champion v{decision.incumbent_version} cannot be compared with this sweep: "
                        f"{decision.incumbent_reason}")
    else:
        decision.promote, decision.why = selection.promotes(decision.champion, decision.incumbent, rule)
    return decision


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", default="latest", help="parent run id of the sweep (default: the latest)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency",
                        help="latency: fastest by paired speed-up within the limits; accuracy: most accurate on validation plates")
    parser.add_argument("--max-drop-pts", type=float, default=None,
                        help="validation points allowed below the unpruned fp32 reference (default 1 for --objective latency)")
    parser.add_argument("--min-speedup", type=float, default=0.0, help="paired speed-up at least this")
    parser.add_argument("--max-latency-ms", type=float, default=math.inf, help="p50 at most this (drifts between trials)")
    parser.add_argument("--max-size-bytes", type=float, default=math.inf)
    parser.add_argument("--min-gain", type=float, default=selection.MIN_GAIN,
                        help=f"faster needs a point speed-up more than 1 + this times the other's, beyond the intervals "
                             f"(default {selection.MIN_GAIN:g}; docs/protocol.md)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.TrackingConfig.uri))
    parser.add_argument("--experiment", default=tracking.TrackingConfig.experiment)


def rule_of(args: argparse.Namespace) -> Rule:
    drop = args.max_drop_pts if args.max_drop_pts is not None else (1.0 if args.objective == "latency" else math.inf)
    return Rule(args.objective, drop, args.min_speedup, args.max_latency_ms, args.max_size_bytes, args.min_gain)
