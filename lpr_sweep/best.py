"""``python -m lpr_sweep.best``: the best trial of a sweep under a stated rule.

Rule: highest ``accuracy`` among FINISHED trials whose ``latency_p50_ms`` and ``size_file_bytes``
are within the given limits; ties go to the lower p50 latency. Without limits it is simply the most
accurate trial.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass

from lpr_sweep import tracking


@dataclass
class Trial:
    run_id: str
    name: str
    status: str
    metrics: dict[str, float]


@dataclass
class Rule:
    max_latency_ms: float = math.inf
    max_size_bytes: float = math.inf

    def __str__(self) -> str:
        limits = [f"latency_p50_ms <= {self.max_latency_ms:g}"] * (self.max_latency_ms < math.inf)
        limits += [f"size_file_bytes <= {self.max_size_bytes:g}"] * (self.max_size_bytes < math.inf)
        return "highest accuracy" + (f" with {' and '.join(limits)}" if limits else "") + " (ties: lower p50)"

    def admits(self, t: Trial) -> bool:
        m = t.metrics
        return (
            t.status == "FINISHED"
            and "accuracy" in m
            and m.get("latency_p50_ms", math.inf) <= self.max_latency_ms
            and m.get("size_file_bytes", math.inf) <= self.max_size_bytes
        )


def select(trials: list[Trial], rule: Rule) -> Trial | None:
    admitted = [t for t in trials if rule.admits(t)]
    if not admitted:
        return None
    return max(admitted, key=lambda t: (t.metrics["accuracy"], -t.metrics.get("latency_p50_ms", math.inf)))


def sweep_trials(cfg: tracking.TrackingConfig, sweep: str) -> tuple[str, list[Trial]]:
    """(parent run id, its child trials); ``sweep`` is a parent run id or ``latest``."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        raise LookupError(f"no experiment {cfg.experiment!r} at {cfg.uri}; run `python -m lpr_sweep -m ...` first")
    client = MlflowClient()
    if sweep == "latest":
        parents = client.search_runs(
            [experiment.experiment_id], f"tags.`{tracking.ROLE_TAG}` = 'sweep'", order_by=["start_time DESC"], max_results=1
        )
        if not parents:
            raise LookupError(f"experiment {cfg.experiment!r} holds no sweep; run `python -m lpr_sweep -m ...` first")
        sweep = parents[0].info.run_id
    runs = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{sweep}'")
    if not runs:
        raise LookupError(f"sweep {sweep} has no trials in experiment {cfg.experiment!r}; pass --sweep <parent run id>")
    return sweep, [Trial(r.info.run_id, r.info.run_name, r.info.status, dict(r.data.metrics)) for r in runs]


def table(trials: list[Trial], best: Trial | None) -> str:
    rows = [f"{'':2}{'trial':<56} {'status':<9} {'accuracy':>8} {'p50 ms':>8} {'file MB':>8}"]
    for t in sorted(trials, key=lambda t: t.name):
        m = t.metrics
        rows.append(
            f"{'*' if t is best else '':2}{t.name[:56]:<56} {t.status:<9} {m.get('accuracy', math.nan):>8.4f} "
            f"{m.get('latency_p50_ms', math.nan):>8.2f} {m.get('size_file_bytes', math.nan) / 1e6:>8.3f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.best", description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="latest", help="parent run id of the sweep (default: latest)")
    parser.add_argument("--max-latency-ms", type=float, default=math.inf)
    parser.add_argument("--max-size-bytes", type=float, default=math.inf)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.TrackingConfig.uri))
    parser.add_argument("--experiment", default=tracking.TrackingConfig.experiment)
    args = parser.parse_args(argv)
    rule = Rule(args.max_latency_ms, args.max_size_bytes)
    try:
        sweep, trials = sweep_trials(tracking.TrackingConfig(uri=args.tracking_uri, experiment=args.experiment), args.sweep)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    best = select(trials, rule)
    print(f"sweep {sweep}: {len(trials)} trials; rule: {rule}")
    print(table(trials, best))
    if best is None:
        print("no trial satisfies the rule; loosen the limits", file=sys.stderr)
        return 1
    print(f"best: {best.name} (run {best.run_id}), accuracy {best.metrics['accuracy']:.4f}, "
          f"p50 {best.metrics.get('latency_p50_ms', math.nan):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
