"""``python -m lpr_sweep.report``: a sweep's MLflow runs turned into a choice of model.

Reads one sweep (default: the latest parent run) back from MLflow and writes ``report.md`` and
``report.png`` into the sweep's ``multirun/`` folder and onto the parent run: one table row per
trial, the Pareto front, and the champion under a stated rule, which it registers in the Model
Registry with the alias ``champion``. The choosing is ``lpr_sweep.selection`` (paired speed-ups
with intervals, validation accuracy, the tie rule); this module reads, renders and registers.

Rules (``--objective`` with any of the limits):
- ``latency`` (the default, with ``--max-drop-pts 1``): the fastest trial by paired speed-up that
  loses at most D validation points against its unpruned fp32 reference;
- ``accuracy``: the most accurate on the validation plates within the limits;
limits: ``--max-drop-pts``, ``--min-speedup``, ``--max-latency-ms``, ``--max-size-bytes``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lpr_sweep import selection, tracking
from lpr_sweep.tracking import registry
from lpr_sweep.selection import OBJECTIVES, Rule, Trial, closest, pareto, select

CHAMPION_ALIAS = "champion"
REGISTRY_TAGS = ("accuracy", "val_accuracy", "drop_pts", "speedup", "speedup_ci_low", "speedup_ci_high",
                 "latency_p50_ms", "latency_ref_p50_ms", "size_file_bytes")

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




def published(t: Trial) -> tuple[float, float, float | None] | None:
    try:
        key = (t.params.get("optimization.name", ""), float(t.params.get("prune.ratio", "nan")))
    except ValueError:
        return None
    return PUBLISHED.get(key)


@dataclass
class Sweep:
    parent_id: str
    sweep_dir: Path | None
    trials: list[Trial]


def load(cfg: tracking.TrackingConfig, sweep: str = "latest") -> Sweep:
    """A sweep's trials from MLflow; ``sweep`` is a parent run id or ``latest``. LookupError if none."""
    parent_id, sweep_dir, runs = registry.read_sweep(cfg, sweep)
    trials = [Trial(r.info.run_id, r.info.run_name, r.info.status, dict(r.data.metrics), dict(r.data.params),
                    r.data.tags.get("error", ""), dict(r.data.tags)) for r in runs]
    return Sweep(parent_id, Path(sweep_dir) if sweep_dir else None, trials)


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _mb(t: Trial, key: str) -> str:
    return _num(t.metrics[key] / 1e6 if key in t.metrics else None, ".3f")


def _published_cell(t: Trial) -> str:
    row = published(t)
    if row is None:
        return ""
    acc, ms, size = row
    return f"{100 * acc:.1f} % · {ms:g} ms" + (f" · {size / 1e6:.2f} MB" if size else "")


def _drop_cell(m: dict[str, float]) -> str:
    if "drop_pts_ci_low" not in m:
        return "–"
    within = m["drop_pts_ci_low"] <= 0 <= m["drop_pts_ci_high"]
    return f"{m['drop_pts']:.2f} [{m['drop_pts_ci_low']:.2f}, {m['drop_pts_ci_high']:.2f}]" + (" (noise)" if within else "")


def _row(t: Trial, mark: str, with_published: bool) -> list[str]:
    m = t.metrics
    if not t.finished:
        status = t.status if t.status != "FINISHED" else "FINISHED, decision metrics missing"
        cells = [mark, t.name, f"{status}: {t.error[:80]}" if t.error else status] + ["–"] * 10
    else:
        cells = [
            mark, t.name, t.status,
            f"{m['accuracy']:.4f} [{_num(m.get('accuracy_ci_low'), '.3f')}, {_num(m.get('accuracy_ci_high'), '.3f')}]",
            _drop_cell(m), f"+{m.get('plates_gained', 0):.0f} / -{m.get('plates_lost', 0):.0f}", f"{m['val_accuracy']:.4f}",
            f"{m['speedup']:.2f}x [{m['speedup_ci_low']:.2f}, {m['speedup_ci_high']:.2f}]" + (" noisy" if t.noisy else ""),
            f"{_num(m.get('latency_p50_ms'), '.2f')} / {_num(m.get('latency_ref_p50_ms'), '.2f')}",
            _mb(t, "size_file_bytes"), _mb(t, "size_nonzero_bytes"), _mb(t, "size_gzip_bytes"),
        ]
    return cells + [_published_cell(t)] * with_published


def _host_line(done: list[Trial]) -> str:
    refs = [t.metrics["latency_ref_p50_ms"] for t in done if t.metrics.get("latency_ref_p50_ms", 0) > 0]
    if not refs:
        return "- Host speed: no trial logged its reference's p50"
    spread = max(refs) / min(refs) - 1
    return (f"- Host speed: the reference's p50 ranged {min(refs):.2f}-{max(refs):.2f} ms over the trials ({100 * spread:.0f} % apart). "
            f"Paired ratios move with the host's own speed, so two trials whose references ran more than "
            f"{100 * selection.HOST_SHIFT:.0f} % apart rank on speed only when one interval clears the other's by "
            f"{100 * selection.HOST_MARGIN:.0f} %" + ("; none did here" if spread <= selection.HOST_SHIFT else ""))


def markdown(sweep: Sweep, rule: Rule, champion: Trial | None, front: list[Trial], note: str) -> str:
    on_front = {t.run_id for t in front}
    with_published = any(published(t) for t in sweep.trials)
    header = ["", "trial", "status", "accuracy [95 % CI]", "drop pts vs reference [95 % CI]", "plates +/-", "val accuracy",
              "speed-up [95 % CI]", "p50 ms / ref p50 ms", "file MB", "nonzero MB", "gzip MB"]
    header += ["course report [1]"] * with_published
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(sweep.trials, key=lambda t: (not t.finished, -t.metrics.get("speedup", 0)))
    for t in order:
        mark = "**champion**" if t is champion else ("front" if t.run_id in on_front else "")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _row(t, mark, with_published)) + " |")

    done = [t for t in sweep.trials if t.finished]
    p = (champion or (done or sweep.trials)[0]).params
    noisy = [t.name + (f" (other processes took {t.metrics['bench_other_cores']:.2f} cores)" if t.metrics.get("bench_host_busy")
                       else " (interval too wide)") for t in done if t.noisy]
    out = [
        f"# Sweep {sweep.parent_id}",
        "",
        f"- Trials: {len(sweep.trials)} ({len(sweep.trials) - len(done)} failed or without the metrics a decision needs); "
        f"folder: {sweep.sweep_dir or 'unknown'}",
        f"- Rule: {rule}",
        f"- Champion: {note}",
        f"- Pareto front over validation accuracy (max), paired speed-up (max, ties within noise) and file size (min): "
        f"{len(front)} trials, marked `front`",
        "- Speed: each trial timed its model against the reference "
        f"({p.get('protocol.reference', 'the unpruned fp32 model')}) in the same process, in alternating blocks "
        f"({p.get('protocol.bench_blocks_min_max', '?')} blocks of {p.get('protocol.bench_calls_per_block', '?')} batch-1 calls "
        f"each, rotating over {p.get('protocol.bench_loads', '1')} separate loads of the trial's model, "
        f"{p.get('protocol.threads', '?')} threads); speed-up = mean over loads of the median per-block ratio, with a 95 % "
        "bootstrap interval. "
        "p50 is shown beside the reference's p50 of the same trial; p50s of different trials are not comparable.",
        "- Noisy trials (interval still wider than benchmark.max_ci_width, or other processes took the trial's cores while "
        "it was timed, beyond benchmark.max_other_cores; their speed ranks with no other trial's, and one is champion "
        "only when every admitted trial is noisy; rerun them on a quiet host): "
        + (", ".join(noisy) if noisy else "none"),
        _host_line(done),
        f"- Accuracy: on {p.get('protocol.n_scored', '?')} scored plates, with a 95 % Wilson interval; drop = points lost against "
        "the reference on the same plates, with a 95 % bootstrap interval over plates, `(noise)` when it contains 0; "
        f"plates +/- = plates gained / lost. Decisions read only the {p.get('protocol.n_val', '?')} validation plates "
        f"(`val accuracy`); {p.get('protocol.n_calib', '?')} calibration plates (seed {p.get('data.seed', '?')}) are never "
        "scored either.",
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
        x = [t.metrics["speedup"] for t in done]
        y = [100 * t.metrics["accuracy"] for t in done]
        err = [[t.metrics["speedup"] - t.metrics["speedup_ci_low"] for t in done],
               [t.metrics["speedup_ci_high"] - t.metrics["speedup"] for t in done]]
        ax.errorbar(x, y, xerr=err, fmt="o", alpha=0.6, capsize=3, label="trial (bars: 95 % interval of the speed-up)")
        steps = sorted(front, key=lambda t: t.metrics["speedup"])
        ax.plot([t.metrics["speedup"] for t in steps], [100 * t.metrics["accuracy"] for t in steps], "r--", label="Pareto front")
        if champion is not None:
            cx, cy = champion.metrics["speedup"], 100 * champion.metrics["accuracy"]
            ax.scatter([cx], [cy], s=200, marker="*", color="gold", edgecolor="k", zorder=5, label="champion")
            ax.annotate(champion.name, (cx, cy), textcoords="offset points", xytext=(8, -12), fontsize=8)
        ax.axvline(1.0, color="grey", lw=0.8)
        # Zoom on the front: a broken trial at 0 % would squash every useful point into one line.
        floor = min(100 * t.metrics["accuracy"] for t in (front or done)) - 5
        below = sum(v < floor for v in y)
        if below:
            ax.set_ylim(bottom=floor, top=max(y) + 1)
            ax.text(0.01, 0.01, f"{below} trial(s) below {floor:.0f} % not shown", transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("paired speed-up over the unpruned fp32 reference (x)")
    ax.set_ylabel("accuracy on scored plates (%)")
    ax.set_title(f"sweep {sweep.parent_id[:8]}: {len(done)} finished of {len(sweep.trials)} trials")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _readable(key: str, value: float) -> str:
    """A tag a person reads: bytes whole, ratios to 2 decimals, accuracies to 4."""
    if key.endswith("_bytes"):
        return str(int(round(value)))
    return f"{value:.2f}" if key.startswith(("speedup", "latency", "drop")) else f"{value:.4f}"


def register(champion: Trial, rule: Rule, model_name: str) -> str:
    """Register the champion's logged MLflow Model and point the alias at it."""

    source = champion.tags.get(tracking.MODEL_TAG)
    if not source:
        raise LookupError(f"trial {champion.name} (run {champion.run_id}) logged no MLflow Model (it predates them); "
                          "rerun it with `resume=false` to log one")
    m, p = champion.metrics, champion.params
    description = (
        f"Champion under: {rule}. Trial {champion.name} (run {champion.run_id}): speed-up {m['speedup']:.2f}x "
        f"[{m['speedup_ci_low']:.2f}, {m['speedup_ci_high']:.2f}] over {p.get('protocol.reference', 'the reference')}, "
        f"{p.get('protocol.threads', '?')} threads, batch 1; accuracy {m['accuracy']:.4f} on {p.get('protocol.n_scored', '?')} "
        f"scored plates (chosen on {p.get('protocol.n_val', '?')} validation plates). Input: uint8 (N, H, W, 3) BGR images; "
        "output: plate, confidence."
    )
    tags = {"rule": str(rule), "trial": champion.name, **{k: _readable(k, m[k]) for k in REGISTRY_TAGS if k in m}}
    version = registry.register_model(source, model_name, tags, description)
    registry.set_champion(model_name, CHAMPION_ALIAS, version)
    return version


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", default="latest", help="parent run id of the sweep (default: the latest)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency",
                        help="latency: fastest by paired speed-up within the limits; accuracy: most accurate on validation plates")
    parser.add_argument("--max-drop-pts", type=float, default=None,
                        help="validation points allowed below the unpruned fp32 reference (default 1 for --objective latency)")
    parser.add_argument("--min-speedup", type=float, default=0.0, help="paired speed-up at least this")
    parser.add_argument("--max-latency-ms", type=float, default=math.inf, help="p50 at most this (drifts between trials)")
    parser.add_argument("--max-size-bytes", type=float, default=math.inf)
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", tracking.TrackingConfig.uri))
    parser.add_argument("--experiment", default=tracking.TrackingConfig.experiment)


def rule_of(args: argparse.Namespace) -> Rule:
    drop = args.max_drop_pts if args.max_drop_pts is not None else (1.0 if args.objective == "latency" else math.inf)
    return Rule(args.objective, drop, args.min_speedup, args.max_latency_ms, args.max_size_bytes)


def choose(sweep: Sweep, rule: Rule) -> tuple[Trial | None, str]:
    """The champion and a one-line account of the choice (which names the closest run on a miss)."""
    champion = select(sweep.trials, rule)
    if champion is not None:
        m = champion.metrics
        tied = [t.name for t in sweep.trials if t is not champion and rule.admits(t) and not (
            champion.speed[0] > t.speed[2] or t.speed[0] > champion.speed[2])]
        return champion, (f"{champion.name} (run {champion.run_id}): speed-up {m['speedup']:.2f}x "
                          f"[{m['speedup_ci_low']:.2f}, {m['speedup_ci_high']:.2f}], validation accuracy {m['val_accuracy']:.4f}, "
                          f"scored accuracy {m['accuracy']:.4f}" + (f"; tied on speed with {len(tied)} other trial(s), "
                                                                    "chosen by the tie rule" if tied else ""))
    near = closest(sweep.trials, rule)
    if near is None:
        return None, ("none: no trial finished with the metrics a decision needs (paired speed-up and validation accuracy; "
                      "a sweep with data.val_size=0 cannot decide without reading the scored plates)")
    misses = ", ".join(f"{k} over by {v:.3g}" for k, v in rule.excess(near).items() if v > 0)
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
    registered = True
    if champion is not None and not args.no_register:
        try:
            note += f"; registered as {args.model_name} version {register(champion, rule, args.model_name)}, alias '{CHAMPION_ALIAS}'"
        except LookupError as e:  # the report is still written; the exit status says nothing was registered
            note += f"; not registered: {e}"
            registered = False
    front = pareto(sweep.trials)
    out = args.out or (sweep.sweep_dir if sweep.sweep_dir and sweep.sweep_dir.is_dir() else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(markdown(sweep, rule, champion, front, note), encoding="utf-8")
    png = plot(sweep, champion, front, out / "report.png")
    registry.log_files(sweep.parent_id, [md, png])
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {md} and {png}; logged to run {sweep.parent_id}")
    return 0 if champion is not None and registered else 1


if __name__ == "__main__":
    sys.exit(main())
