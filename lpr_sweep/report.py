"""``python -m lpr_sweep.report``: a sweep's MLflow runs turned into a choice of model.

Reads one sweep (default: the latest parent run) back from MLflow and writes ``report.md`` and
``report.png`` into the sweep's ``multirun/`` folder and onto the parent run: one table row per
trial, the Pareto front over accuracy (max), p50 latency (min) and file size (min), and the champion
under a stated rule, which it registers in the Model Registry with the alias ``champion``.

Rules (``--objective`` with any of the limits):
- ``accuracy``: highest accuracy with latency <= X ms and size <= Y bytes (ties: lower p50);
- ``latency`` (the default, with ``--max-drop-pts 1``): lowest p50 latency with at most D points
  lost against the baseline (ties: higher accuracy).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from lpr_sweep import tracking

OBJECTIVES = ("accuracy", "latency")
CHAMPION_ALIAS = "champion"
FRONT_KEYS = ("accuracy", "latency_p50_ms", "size_file_bytes")

# The original course report's published rows, quoted in docs/measured.md ("The original course
# report"), keyed by (optimization preset, prune ratio). Its protocol differs from ours: eager
# PyTorch on Colab, mean of 100 calls after 10 warm-ups, per-layer pruning, size = nonzero fp32
# parameters x 4 bytes (our size_nonzero_bytes).
PUBLISHED_SOURCE = (
    "the original course report (quoted in docs/measured.md): eager PyTorch on Colab, latency = mean of 100 "
    "calls after 10 warm-ups, size = nonzero fp32 parameters x 4 B, per-layer pruning (our prune.scope=layer)"
)
PUBLISHED = {  # accuracy, latency in ms, size in bytes (None: not published)
    ("baseline", 0.0): (0.900, 250.0, 1.11e6),
    ("prune", 0.5): (0.823, 143.0, 0.71e6),
    ("mlc", 0.0): (0.894, 47.0, None),
    ("prune_mlc", 0.5): (0.800, 39.0, None),
    ("quant", 0.0): (0.743, 28.0, 0.51e6),
    ("prune_quant", 0.5): (0.668, 2.4, 0.51e6),
}


@dataclass
class Trial:
    run_id: str
    name: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED" and all(k in self.metrics for k in FRONT_KEYS)

    def published(self) -> tuple[float, float, float | None] | None:
        try:
            key = (self.params.get("optimization.name", ""), float(self.params.get("prune.ratio", "nan")))
        except ValueError:
            return None
        return PUBLISHED.get(key)


@dataclass
class Rule:
    objective: str = "latency"
    max_latency_ms: float = math.inf
    max_size_bytes: float = math.inf
    max_drop_pts: float = math.inf

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is unknown; use one of {OBJECTIVES}")

    def __str__(self) -> str:
        limits = [f"latency_p50_ms <= {self.max_latency_ms:g}"] * (self.max_latency_ms < math.inf)
        limits += [f"size_file_bytes <= {self.max_size_bytes:g}"] * (self.max_size_bytes < math.inf)
        limits += [f"drop <= {self.max_drop_pts:g} pts against the baseline"] * (self.max_drop_pts < math.inf)
        head = "highest accuracy" if self.objective == "accuracy" else "lowest p50 latency"
        ties = "lower p50" if self.objective == "accuracy" else "higher accuracy"
        return head + (f" with {' and '.join(limits)}" if limits else "") + f" (ties: {ties})"

    def excess(self, t: Trial, baseline: Trial | None) -> dict[str, float]:
        """How far ``t`` is over each limit (<= 0 everywhere: admitted); inf where it cannot be judged."""
        m = t.metrics
        out = {}
        if self.max_latency_ms < math.inf:
            out["latency_p50_ms"] = m["latency_p50_ms"] - self.max_latency_ms
        if self.max_size_bytes < math.inf:
            out["size_file_bytes"] = m["size_file_bytes"] - self.max_size_bytes
        if self.max_drop_pts < math.inf:
            d = drop_pts(t, baseline)
            out["drop_pts"] = math.inf if d is None else d - self.max_drop_pts
        return out

    def admits(self, t: Trial, baseline: Trial | None) -> bool:
        # The slack absorbs float noise: 100 * (0.90 - 0.89) is 1.0000000000000009, not 1.
        return t.finished and all(v <= 1e-9 for v in self.excess(t, baseline).values())

    def key(self, t: Trial) -> tuple[float, float]:
        """Sort key, best first."""
        acc, p50 = t.metrics["accuracy"], t.metrics["latency_p50_ms"]
        return (-acc, p50) if self.objective == "accuracy" else (p50, -acc)


def drop_pts(t: Trial, baseline: Trial | None) -> float | None:
    if baseline is None or "accuracy" not in t.metrics:
        return None
    return 100 * (baseline.metrics["accuracy"] - t.metrics["accuracy"])


def select(trials: list[Trial], rule: Rule, baseline: Trial | None = None) -> Trial | None:
    admitted = sorted((t for t in trials if rule.admits(t, baseline)), key=rule.key)
    return admitted[0] if admitted else None


def closest(trials: list[Trial], rule: Rule, baseline: Trial | None = None) -> Trial | None:
    """The finished trial that misses the rule's limits by the least (largest relative excess)."""

    def miss(t: Trial) -> float:
        limits = {"latency_p50_ms": rule.max_latency_ms, "size_file_bytes": rule.max_size_bytes, "drop_pts": rule.max_drop_pts}
        return max((e / max(abs(limits[k]), 1e-9) for k, e in rule.excess(t, baseline).items()), default=0.0)

    done = [t for t in trials if t.finished]
    return min(done, key=lambda t: (miss(t), rule.key(t))) if done else None


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """``a`` is no worse than ``b`` everywhere and better somewhere (all objectives minimised)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto(trials: list[Trial]) -> list[Trial]:
    """Finished trials no other trial dominates; identical points are all kept."""

    def point(t: Trial) -> tuple[float, float, float]:
        return -t.metrics["accuracy"], t.metrics["latency_p50_ms"], t.metrics["size_file_bytes"]

    # In lexicographic order no later point can dominate an earlier one, so each point only needs
    # checking against the front kept so far.
    front: list[Trial] = []
    for t in sorted((t for t in trials if t.finished), key=point):
        if not any(dominates(point(f), point(t)) for f in front):
            front.append(t)
    return front


def baseline_of(trials: list[Trial]) -> Trial | None:
    """The unmodified fp32 model: unpruned and unquantized; ORT and the baseline preset preferred."""
    plain = [
        t for t in trials
        if t.finished and t.params.get("quant.backend") == "none" and t.params.get("prune.ratio") in ("0", "0.0")
    ]
    plain.sort(key=lambda t: (t.params.get("optimization.name") != "baseline", t.params.get("runtime.name") != "onnxruntime"))
    return plain[0] if plain else None


@dataclass
class Sweep:
    parent_id: str
    sweep_dir: Path | None
    trials: list[Trial]
    baseline: Trial | None = None
    baseline_note: str = "from this sweep"


def _trial(run) -> Trial:
    return Trial(run.info.run_id, run.info.run_name, run.info.status, dict(run.data.metrics),
                 dict(run.data.params), run.data.tags.get("error", ""))


def load(cfg: tracking.TrackingConfig, sweep: str = "latest") -> Sweep:
    """A sweep's trials from MLflow; ``sweep`` is a parent run id or ``latest``. LookupError if none."""
    from mlflow import MlflowClient

    exp = _experiment(cfg)
    client = MlflowClient()
    if sweep == "latest":
        parents = client.search_runs([exp], f"tags.`{tracking.ROLE_TAG}` = 'sweep'", order_by=["start_time DESC"], max_results=1)
        if not parents:
            raise LookupError(f"experiment {cfg.experiment!r} holds no sweep; run `python -m lpr_sweep -m ...` first")
        parent = parents[0]
    else:
        try:
            parent = client.get_run(sweep)
        except Exception:
            raise LookupError(f"no run {sweep!r} at {cfg.uri}; pass the parent run id shown by the sweep") from None
    # a resumed sweep re-ran its interrupted trials: show each config once
    runs = tracking.latest_per_config(client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=5000))
    if not runs:
        raise LookupError(f"sweep {parent.info.run_id} has no trials in experiment {cfg.experiment!r}; pass --sweep <parent run id>")
    trials = [_trial(r) for r in runs]
    sweep_dir = parent.data.tags.get("sweep_dir")
    out = Sweep(parent.info.run_id, Path(sweep_dir) if sweep_dir else None, trials, baseline_of(trials))
    if out.baseline is None:
        out.baseline = _baseline_elsewhere(client, exp, trials)
        out.baseline_note = "from an earlier run in this experiment (this sweep has none); add optimization=baseline to the sweep"
    return out


def _baseline_elsewhere(client, exp: str, trials: list[Trial]) -> Trial | None:
    """The latest finished baseline trial scored on the same plates with the same norm."""
    done = [t for t in trials if t.finished]
    if not done:
        return None
    same = {k: done[0].params.get(k) for k in ("protocol.n_scored", "data.seed", "data.calib_size", "model.norm")}
    runs = client.search_runs(
        [exp], f"tags.`{tracking.ROLE_TAG}` = 'trial' and attributes.status = 'FINISHED' and params.`quant.backend` = 'none'",
        order_by=["start_time DESC"], max_results=500,
    )
    candidates = [_trial(r) for r in runs]
    return baseline_of([t for t in candidates if all(t.params.get(k) == v for k, v in same.items())])


def _experiment(cfg: tracking.TrackingConfig) -> str:
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is None:
        raise LookupError(f"no experiment {cfg.experiment!r} at {cfg.uri}; run `python -m lpr_sweep -m ...` first")
    return experiment.experiment_id


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _mb(t: Trial, key: str) -> str:
    return _num(t.metrics[key] / 1e6 if key in t.metrics else None, ".3f")


def _published_cell(t: Trial) -> str:
    row = t.published()
    if row is None:
        return ""
    acc, ms, size = row
    return f"{100 * acc:.1f} % · {ms:g} ms" + (f" · {size / 1e6:.2f} MB" if size else "")


def markdown(sweep: Sweep, rule: Rule, champion: Trial | None, front: list[Trial], note: str) -> str:
    base = sweep.baseline
    on_front = {t.run_id for t in front}
    with_published = any(t.published() for t in sweep.trials)
    header = ["", "trial", "status", "accuracy", "drop pts", "p50 ms", "p90 ms", "speed-up", "file MB", "nonzero MB", "gzip MB"]
    header += ["course report [1]"] * with_published
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in sorted(sweep.trials, key=lambda t: (not t.finished, -t.metrics.get("accuracy", 0), t.metrics.get("latency_p50_ms", 0))):
        m = t.metrics
        mark = "**champion**" if t is champion else ("front" if t.run_id in on_front else "")
        if not t.finished:
            status = t.status if t.status != "FINISHED" else "FINISHED, metrics missing"
            cells = [mark, t.name, f"{status}: {t.error[:80]}" if t.error else status] + ["–"] * 8
        else:
            speedup = base.metrics["latency_p50_ms"] / m["latency_p50_ms"] if base else None
            cells = [
                mark, t.name, t.status, f"{m['accuracy']:.4f}", _num(drop_pts(t, base), ".2f"),
                f"{m['latency_p50_ms']:.2f}", _num(m.get("latency_p90_ms"), ".2f"), _num(speedup, ".2f") + "x" * (speedup is not None),
                _mb(t, "size_file_bytes"), _mb(t, "size_nonzero_bytes"), _mb(t, "size_gzip_bytes"),
            ]
        cells += [_published_cell(t)] * with_published
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")

    p = (base or champion or sweep.trials[0]).params
    failed = sum(not t.finished for t in sweep.trials)
    out = [
        f"# Sweep {sweep.parent_id}",
        "",
        f"- Trials: {len(sweep.trials)} ({failed} failed or incomplete); folder: {sweep.sweep_dir or 'unknown'}",
        f"- Rule: {rule}",
        f"- Champion: {note}",
        "- Baseline (drop and speed-up are against it): "
        + (f"{base.name} (run {base.run_id}), accuracy {base.metrics['accuracy']:.4f}, {sweep.baseline_note}" if base else "none found; drop and speed-up are left empty"),
        f"- Pareto front over accuracy (max), p50 latency (min), file size (min): {len(front)} trials, marked `front`",
        f"- Protocol: accuracy on {p.get('protocol.n_scored', '?')} scored plates; {p.get('protocol.n_calib', '?')} calibration "
        f"plates (seed {p.get('data.seed', '?')}) are never scored; latency = batch {p.get('protocol.latency_batch', 1)}, "
        f"{p.get('protocol.threads', '?')} threads, {p.get('benchmark.warmup', '?')} warm-up + {p.get('benchmark.repeats', '?')} "
        "timed calls on the first scored plate, each trial in its own process slot of the sweep (timings drift about ±30 % "
        "between trials on a shared 2-core machine: rerun `make bench` for side-by-side ratios)",
        "- Sizes: file = the deployable files; nonzero = nonzero parameter elements x itemsize; gzip = the files gzipped",
        "",
        *lines,
    ]
    if with_published:
        out += ["", f"[1] accuracy · latency · size as published by {PUBLISHED_SOURCE}."]
    return "\n".join(out) + "\n"


def plot(sweep: Sweep, champion: Trial | None, front: list[Trial], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in sweep.trials if t.finished]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    if done:
        sizes = [t.metrics["size_file_bytes"] for t in done]
        scale = 400 / max(sizes)
        ax.scatter([t.metrics["latency_p50_ms"] for t in done], [100 * t.metrics["accuracy"] for t in done],
                   s=[20 + s * scale for s in sizes], alpha=0.5, label="trial (marker area ~ file size)")
        steps = sorted(front, key=lambda t: t.metrics["latency_p50_ms"])
        ax.plot([t.metrics["latency_p50_ms"] for t in steps], [100 * t.metrics["accuracy"] for t in steps],
                "r--o", ms=4, label="Pareto front")
        if champion is not None:
            x, y = champion.metrics["latency_p50_ms"], 100 * champion.metrics["accuracy"]
            ax.scatter([x], [y], s=200, marker="*", color="gold", edgecolor="k", zorder=5, label="champion")
            ax.annotate(champion.name, (x, y), textcoords="offset points", xytext=(8, -12), fontsize=8)
        # Zoom on the front: a broken trial at 0 % would squash every useful point into one line.
        floor = min(100 * t.metrics["accuracy"] for t in front) - 5
        below = sum(100 * t.metrics["accuracy"] < floor for t in done)
        if below:
            ax.set_ylim(bottom=floor, top=100 * max(t.metrics["accuracy"] for t in done) + 1)
            ax.text(0.01, 0.01, f"{below} trial(s) below {floor:.0f} % not shown", transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("p50 latency, batch 1 (ms)")
    ax.set_ylabel("accuracy on scored plates (%)")
    ax.set_title(f"sweep {sweep.parent_id[:8]}: {len(done)} finished of {len(sweep.trials)} trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def register(champion: Trial, rule: Rule, model_name: str) -> str:
    """Register the champion run's artifacts (its deployable files) and point the alias at them."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.create_registered_model(model_name, description="LPRNet variants chosen by `python -m lpr_sweep.report`")
    except MlflowException as e:
        if "already exists" not in str(e).lower():
            raise
    run = client.get_run(champion.run_id)
    version = client.create_model_version(
        model_name, source=run.info.artifact_uri, run_id=champion.run_id,
        tags={"rule": str(rule), "trial": champion.name, **{k: f"{champion.metrics[k]:g}" for k in FRONT_KEYS}},
        description=f"champion under: {rule}",
    )
    client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version.version)
    return version.version


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", default="latest", help="parent run id of the sweep (default: the latest)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency",
                        help="accuracy: highest accuracy within the limits; latency: lowest p50 within them")
    parser.add_argument("--max-latency-ms", type=float, default=math.inf)
    parser.add_argument("--max-size-bytes", type=float, default=math.inf)
    parser.add_argument("--max-drop-pts", type=float, default=None,
                        help="accuracy points allowed below the baseline (default 1 for --objective latency)")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.TrackingConfig.uri))
    parser.add_argument("--experiment", default=tracking.TrackingConfig.experiment)


def rule_of(args: argparse.Namespace) -> Rule:
    drop = args.max_drop_pts if args.max_drop_pts is not None else (1.0 if args.objective == "latency" else math.inf)
    return Rule(args.objective, args.max_latency_ms, args.max_size_bytes, drop)


def choose(sweep: Sweep, rule: Rule) -> tuple[Trial | None, str]:
    """The champion and a one-line account of the choice (which names the closest run on a miss)."""
    champion = select(sweep.trials, rule, sweep.baseline)
    if champion is not None:
        m = champion.metrics
        return champion, f"{champion.name} (run {champion.run_id}): accuracy {m['accuracy']:.4f}, p50 {m['latency_p50_ms']:.2f} ms"
    near = closest(sweep.trials, rule, sweep.baseline)
    if near is None:
        return None, "none: no trial finished with accuracy, latency and size"
    misses = ", ".join(f"{k} over by {v:.3g}" for k, v in rule.excess(near, sweep.baseline).items() if v > 0)
    return None, f"none: no trial satisfies the rule; closest is {near.name} (run {near.run_id}): {misses}; nothing registered"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.report", description=__doc__.splitlines()[0])
    add_rule_arguments(parser)
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and report.png (default: the sweep's folder)")
    parser.add_argument("--model-name", default="lpr_sweep", help="Model Registry name for the champion")
    parser.add_argument("--no-register", action="store_true", help="write the report without touching the registry")
    args = parser.parse_args(argv)
    cfg = tracking.TrackingConfig(uri=args.tracking_uri, experiment=args.experiment)
    try:
        sweep = load(cfg, args.sweep)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rule = rule_of(args)
    champion, note = choose(sweep, rule)
    if champion is not None and not args.no_register:
        note += f"; registered as {args.model_name} version {register(champion, rule, args.model_name)}, alias '{CHAMPION_ALIAS}'"
    front = pareto(sweep.trials)
    out = args.out or (sweep.sweep_dir if sweep.sweep_dir and sweep.sweep_dir.is_dir() else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(markdown(sweep, rule, champion, front, note), encoding="utf-8")
    png = plot(sweep, champion, front, out / "report.png")
    from mlflow import MlflowClient

    for path in (md, png):
        MlflowClient().log_artifact(sweep.parent_id, str(path))
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md} and {png}; logged to run {sweep.parent_id}")
    return 0 if champion is not None else 1


if __name__ == "__main__":
    sys.exit(main())
