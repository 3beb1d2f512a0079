"""``python -m lpr_sweep.report``: a sweep's MLflow runs turned into a choice of model.

Reads one sweep (default: the latest parent run) back from MLflow and writes ``report.md``,
``report.png`` and ``final.json`` into the sweep's ``multirun/`` folder and onto the parent run: one
table row per trial, the Pareto front, the final, and the champion under a stated rule. The choosing
is ``lpr_sweep.selection`` and ``lpr_sweep.decision``; this module reads and renders.

How the champion is chosen:
1. Only comparable trials take part (same data, plates, reference and timing protocol as most of
   the sweep's trials; no error recorded); the others are listed with the reason.
2. Finalists: the admitted trials no admitted trial beats beyond the margin, the Pareto front, and
   the incumbent champion when it is comparable (at most ``--finalists``).
3. The final (``lpr_sweep.final``): their logged models timed side by side with the reference in
   this process; the rule decides on these ratios (``--no-final``: on each trial's own).
4. The promotion gate: the alias ``champion`` moves only when the final's winner beats the incumbent
   under the same rule (``--promote`` forces it); otherwise the winner gets the alias ``challenger``.
   A sweep registers one version at most, however often it is reported.

Rules (``--objective`` with any of the limits):
- ``latency`` (the default, with ``--max-drop-pts 1``): the fastest trial by paired speed-up that
  loses at most D validation points against its unpruned fp32 reference;
- ``accuracy``: the most accurate on the validation plates within the limits;
limits: ``--max-drop-pts``, ``--min-speedup``, ``--max-latency-ms``, ``--max-size-bytes``; and the
practical margin ``--min-gain`` that "faster" needs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from lpr_sweep import profile, selection, tracking
from lpr_sweep.decision import CHAMPION_ALIAS, Decision, Sweep, add_rule_arguments, decide, load, register, rule_of, trial_of
from lpr_sweep.tracking import registry
from lpr_sweep.selection import Rule, Trial, pareto


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


def final_table(decision: Decision) -> list[str]:
    if not decision.finalists:
        return []
    timed = decision.final_protocol is not None
    rows = ["", "## Final" + (": side by side in one process" if timed else " (not timed: decided on each trial's own ratio)"), ""]
    if timed:
        pr = decision.final_protocol
        rows += [f"Reference: {pr['reference']}; {pr['threads']} threads, batch {pr['batch']} ({pr['input']}), {pr['warmup']} "
                 f"warm-up calls, {pr['calls_per_block']} calls per block, {pr['loads']} loads of each finalist, "
                 f"{pr['seconds_min_max']} s; {pr['order']}. 95 % bootstrap intervals.", ""]
    rows += ["| trial | final speed-up [95 % CI] | in-trial speed-up [95 % CI] | val accuracy | val drop pts |",
             "|---|---|---|---|---|"]
    for t in decision.finalists:
        m = t.metrics
        mark = " **(winner)**" if decision.champion is not None and t.run_id == decision.champion.run_id else ""
        mark += f" (champion v{decision.incumbent_version})" if decision.incumbent and t.run_id == decision.incumbent.run_id else ""
        final_cell = (f"{m['speedup']:.3f}x [{m['speedup_ci_low']:.3f}, {m['speedup_ci_high']:.3f}]" + (" noisy" if t.noisy else "")
                      if timed else "–")
        own = ("trial_speedup", "trial_speedup_ci_low", "trial_speedup_ci_high") if timed else (
            "speedup", "speedup_ci_low", "speedup_ci_high")
        rows.append(f"| {t.name.replace('|', '/')}{mark} | {final_cell} | {m[own[0]]:.3f}x [{m[own[1]]:.3f}, {m[own[2]]:.3f}] | "
                    f"{m['val_accuracy']:.4f} | {m['val_drop_pts']:.2f} |")
    return rows


def costliest(champion: Trial | None, rows: list[dict], n: int = 5) -> list[str]:
    """Where the champion's time goes: its profile's ``n`` costliest ops (``lpr_sweep.profile``)."""
    if champion is None:
        return []
    head = ["", f"## Where the champion's time goes ({champion.name})", ""]
    if not rows:
        return head + [f"No per-op profile: runtime {champion.params.get('runtime.name', '?')} gives none, or profile.enabled=false."]
    m = champion.metrics
    ref = f"; {m['profile_ref_kernel_us']:.0f} µs in reference kernels (ref_*)" if "profile_ref_kernel_us" in m else ""
    return head + [f"Its {n} costliest of {len(rows)} ops, from the runtime's own counters (mean of "
                   f"{champion.params.get('profile.calls', '?')} batch-1 calls after the timing, a load of its own); "
                   f"{sum(r['us_per_call'] for r in rows):.0f} µs per call in all{ref}. The full profile is the run's profile.csv.",
                   "", *profile.table(rows, n)]


def markdown(sweep: Sweep, rule: Rule, decision: Decision, front: list[Trial], champion_profile: list[dict] | None = None) -> str:
    champion, note = decision.champion, decision.note
    on_front = {t.run_id for t in front}
    with_published = any(published(t) for t in sweep.trials)
    header = ["", "trial", "status", "accuracy [95 % CI]", "drop pts vs reference [95 % CI]", "plates +/-", "val accuracy",
              "speed-up [95 % CI]", "p50 ms / ref p50 ms", "file MB", "nonzero MB", "gzip MB"]
    header += ["course report [1]"] * with_published
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    order = sorted(sweep.trials, key=lambda t: (not t.finished, -t.metrics.get("speedup", 0)))
    for t in order:
        mark = ("**champion**" if champion is not None and t.run_id == champion.run_id else
                "not comparable" if t.run_id in decision.excluded else "front" if t.run_id in on_front else "")
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _row(t, mark, with_published)) + " |")

    names = {t.run_id: t.name for t in sweep.trials}
    done = [t for t in sweep.trials if t.finished]
    p = (champion or (done or sweep.trials)[0]).params
    noisy = [t.name + (f" (other processes took {t.metrics['bench_other_cores']:.2f} cores)" if t.metrics.get("bench_host_busy")
                       else " (interval too wide)") for t in done if t.noisy]
    out = [
        f"# Sweep {sweep.parent_id}",
        "",
        f"- Trials: {len(sweep.trials)} ({len(sweep.trials) - len(done)} failed or without the metrics a decision needs; "
        f"{sum('(reused from sweep' in t.name for t in sweep.trials)} reused from an earlier sweep by resume=true); "
        f"folder: {sweep.sweep_dir or 'unknown'}",
        *[f"- Left out: {n}" for n in sweep.notes],
        *([f"- **Unfinished**: {sweep.unfinished}. The choice below covers only the trials that ended; nothing was "
           "registered and no final was timed"] if sweep.unfinished else []),
        f"- Rule: {rule}",
        f"- Champion: {note}",
        f"- Decided on: {decision.decided_on}",
        *([f"- Registry: {decision.registry}"] if decision.registry else []),
        "- Not comparable (left out of the decision: other data, plates, reference or timing protocol than the sweep's): "
        + ("; ".join(f"{names[r]} ({why})" for r, why in decision.excluded.items()) or "none"),
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
        *final_table(decision),
        *(costliest(champion, champion_profile) if champion_profile is not None else []),
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


def _log_final(decision: Decision, parent_id: str, out: Path) -> Path:
    """``final.json`` beside the report, and the final's ratios as the parent run's metrics."""
    rows = [{"trial": t.name, "run_id": t.run_id, **{k: t.metrics.get(k) for k in (
        "speedup", "speedup_ci_low", "speedup_ci_high", "trial_speedup", "trial_speedup_ci_low", "trial_speedup_ci_high",
        "val_accuracy", "val_drop_pts", "bench_noisy")}} for t in decision.finalists]
    path = out / "final.json"
    path.write_text(json.dumps({"decided_on": decision.decided_on, "protocol": decision.final_protocol, "finalists": rows,
                                "winner": decision.champion.run_id if decision.champion else None}, indent=2) + "\n")
    if decision.final_protocol is not None:
        metrics = {f"final.{t.run_id[:8]}.{k}": t.metrics[k] for t in decision.finalists
                   for k in ("speedup", "speedup_ci_low", "speedup_ci_high") if k in t.metrics}
        registry.log_metrics(parent_id, metrics)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lpr_sweep.report", description=__doc__.splitlines()[0])
    add_rule_arguments(parser)
    parser.add_argument("--finalists", type=int, default=selection.FINALISTS,
                        help=f"trials timed side by side in the final, the incumbent champion included (default {selection.FINALISTS})")
    parser.add_argument("--no-final", action="store_true", help="decide on each trial's own ratio, without the final (a quick look)")
    parser.add_argument("--promote", action="store_true",
                        help="move the champion alias to this sweep's best even when it does not beat the incumbent")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and report.png (default: the sweep's folder)")
    parser.add_argument("--model-name", default="lpr_sweep", help="Model Registry name for the champion")
    parser.add_argument("--no-register", action="store_true", help="write the report without touching the registry")
    args = parser.parse_args(argv)
    if args.finalists < 1 or not 0 <= args.min_gain < 1:
        parser.error("--finalists must be >= 1 and --min-gain in [0, 1) (a fraction: 0.05 for 5 %)")
    cfg = tracking.TrackingConfig(uri=args.tracking_uri, experiment=args.experiment)
    try:
        sweep = load(cfg, args.sweep)
    except LookupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = args.out or (sweep.sweep_dir if sweep.sweep_dir and sweep.sweep_dir.is_dir() else Path("."))
    try:  # before the final and the registry: a report that cannot be written must cost nothing
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-check").touch()
        (out / ".write-check").unlink()
    except OSError as e:
        print(f"error: cannot write the report into {out} ({e.strerror or e}); pass --out <a writable folder>", file=sys.stderr)
        return 1
    rule = rule_of(args)
    held = registry.aliased(args.model_name, CHAMPION_ALIAS)
    incumbent = (held[0], trial_of(held[1]) if held[1] is not None else None) if held else None
    timer = None
    if not args.no_final and not sweep.unfinished:  # timing finalists of a sweep that is not over decides nothing
        from lpr_sweep import final

        timer = final.run
    decision = decide(sweep, rule, incumbent, args.finalists, timer)
    registered = True
    if sweep.unfinished:  # a decision on part of a sweep is no decision: shown, never recorded
        decision.registry, registered = f"not registered: {sweep.unfinished}", args.no_register
    elif decision.champion is not None:
        registry.mark_best(sweep.parent_id, decision.champion.run_id, decision.champion.name,
                           [t.run_id for t in sweep.trials if t.tags.get(registry.BEST_TAG) == sweep.parent_id])
    if decision.champion is not None and not args.no_register and not sweep.unfinished:
        try:
            decision.registry, registered = register(decision, rule, sweep, args.model_name, args.promote)
        except LookupError as e:  # the report is still written; the exit status says nothing was registered
            decision.registry, registered = f"not registered: {e}", False
    front = pareto(sweep.trials, rule.min_gain)
    md = out / "report.md"
    rows = profile.of_run(decision.champion.run_id) if decision.champion is not None else []
    md.write_text(markdown(sweep, rule, decision, front, rows), encoding="utf-8")
    png = plot(sweep, decision.champion, front, out / "report.png")
    files = [md, png] + ([_log_final(decision, sweep.parent_id, out)] if decision.finalists else [])
    registry.log_files(sweep.parent_id, files)
    print(md.read_text(encoding="utf-8"))
    print(f"wrote {', '.join(str(f) for f in files)}; logged to run {sweep.parent_id}")
    if sweep.unfinished:
        print(f"{'note' if args.no_register else 'error'}: {sweep.unfinished}", file=sys.stderr)
    return 0 if decision.champion is not None and registered else 1


if __name__ == "__main__":
    sys.exit(main())
