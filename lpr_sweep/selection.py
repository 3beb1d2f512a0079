"""Choosing among a sweep's trials: the tie rule, the Pareto front, the champion rule. No I/O.

What decides, and why:
- **Speed** is each trial's paired ``speedup`` against the same reference model, timed interleaved
  in one process with its 95 % interval: in the report's final, the finalists side by side
  (``benchmark.rotating``); with ``--no-final``, each trial's own ratio from its own process. One
  trial is faster than another only when its interval lies wholly above the other's *and* its point
  speed-up is more than ``1 + min_gain`` times the other's (``MIN_GAIN``): loads of the same dense
  compute differ by 1-2 % with intervals of ±0.2 % on a quiet host, so "beyond noise" alone ranked
  identical models (docs/protocol.md, "The practical margin"). Otherwise they are tied on speed.
  Latencies of trials timed apart drift too much to rank (docs/measured.md, "Runtimes").
  A trial flagged ``bench_noisy`` (its interval stayed too wide, or other processes took its cores
  while it was timed: either way its interval is not to be trusted) is tied on speed with every
  trial, and the champion comes from the trials not flagged whenever one is admitted.
  The host itself runs faster or slower for minutes at a time, and paired ratios move with it:
  when two trials' references ran more than ``HOST_SHIFT`` apart, one is faster only when its
  interval lies more than ``HOST_MARGIN`` above the other's. (In the final every finalist shares
  one reference, so this never applies there.)
- **Comparable trials only**: a trial takes part only when its data, its scored and validation
  plates, its reference and its timing protocol match the sweep's (``comparable``); a FINISHED run
  tagged with an error never takes part.
- **Accuracy** for decisions is ``val_accuracy``, on the validation plates; the scored plates only
  report. A trial without validation plates (``data.val_size=0``) cannot take part in a decision.
- Within noise, ties go to accuracy (judged by the upper end of the validation drop's interval, so a
  model proven identical to the reference beats one that matched it by luck), then to size
  (``size_file_bytes``, then ``size_nonzero_bytes``); never to a point speed-up within the margin.

``report`` reads trials from MLflow and renders; this module is tested on synthetic trials.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

OBJECTIVES = ("latency", "accuracy")  # latency: fastest within the limits; accuracy: most accurate within them
# On the AVX2 EPYC VM the unpruned reference ran at about 2.1 ms or about 2.65 ms p50 for minutes at
# a time, and the same int8 model's paired speed-up moved up to 12 % with it (2.35x against 2.62x;
# docs/measured.md, "The host's own speed moves paired ratios"): a gap that size between trials timed at different
# host speeds is the host's.
HOST_SHIFT = 0.10  # reference p50s of two trials further apart than this (relative) ...
HOST_MARGIN = 0.15  # ... rank on speed only when one's interval clears the other's by this much
# A practical margin: a speed-up must beat another by more than this fraction to count. Identical
# dense models differ by up to ~1.5 % between loads (Xeon: 1.000-1.0125x; docs/protocol.md).
MIN_GAIN = 0.05
FINALISTS = 4  # trials timed side by side in the report's final, the incumbent champion included
# What makes two trials' numbers comparable: the same data, plates, reference and timing protocol.
COMPARABLE_PARAMS = ("protocol.data_identity", "protocol.scored_digest", "protocol.val_digest", "protocol.reference",
                     "protocol.threads", "protocol.latency_batch", "protocol.bench_loads", "protocol.bench_calls_per_block",
                     "protocol.bench_seconds_min_max")
DECISION_KEYS = ("val_accuracy", "speedup", "speedup_ci_low", "speedup_ci_high", "size_file_bytes", "val_drop_pts")


@dataclass
class Trial:
    run_id: str
    name: str
    status: str
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)
    error: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """FINISHED with every metric a decision reads, and no error recorded against it."""
        return self.status == "FINISHED" and not self.error and all(k in self.metrics for k in DECISION_KEYS)

    @property
    def speed(self) -> tuple[float, float, float]:
        m = self.metrics
        return m["speedup_ci_low"], m["speedup"], m["speedup_ci_high"]

    @property
    def noisy(self) -> bool:
        return bool(self.metrics.get("bench_noisy", 0))


def host_shift(a: Trial, b: Trial) -> float:
    """How far apart the two trials' references ran (0 when either did not log it)."""
    ra, rb = a.metrics.get("latency_ref_p50_ms", 0.0), b.metrics.get("latency_ref_p50_ms", 0.0)
    return max(ra, rb) / min(ra, rb) - 1 if min(ra, rb) > 0 else 0.0


def faster(a: Trial, b: Trial, min_gain: float = MIN_GAIN) -> bool:
    """``a`` is faster than ``b`` beyond noise and by enough to matter: neither is flagged, ``a``'s
    interval lies wholly above ``b``'s (by ``HOST_MARGIN`` when their references ran more than
    ``HOST_SHIFT`` apart), and ``a``'s point speed-up is more than ``1 + min_gain`` times ``b``'s."""
    margin = 1 + HOST_MARGIN if host_shift(a, b) > HOST_SHIFT else 1.0
    return (not a.noisy and not b.noisy and a.speed[0] > b.speed[2] * margin
            and a.speed[1] > b.speed[1] * (1 + min_gain))


def tied_on_speed(a: Trial, b: Trial, min_gain: float = MIN_GAIN) -> bool:
    return not faster(a, b, min_gain) and not faster(b, a, min_gain)


def better(a: Trial, b: Trial, by_speed: bool = True) -> bool:
    """The tie rule's order between two trials tied on speed: accuracy, judged by the pessimistic end of
    its interval (the upper bound of the validation drop against the reference), then the point
    accuracy, then size (the files, then their nonzero bytes, which is what compression keeps), then
    the point speed-up (unless ``by_speed`` is off). Judged pessimistically, a model that predicts exactly as the reference does
    beats one that scored as well on 200 plates by gaining some and losing others."""

    def key(t: Trial) -> tuple[float, ...]:
        m = t.metrics
        return (-m.get("val_drop_pts_ci_high", m["val_drop_pts"]), m["val_accuracy"], -m["size_file_bytes"],
                -m.get("size_nonzero_bytes", 0), m["speedup"] if by_speed else 0.0)

    return key(a) > key(b)


def dominates(a: Trial, b: Trial, min_gain: float = MIN_GAIN) -> bool:
    """``a`` is no slower (beyond the margin), no less accurate and no larger than ``b``, and better somewhere."""
    if faster(b, a, min_gain):
        return False
    ma, mb = a.metrics, b.metrics
    if ma["val_accuracy"] < mb["val_accuracy"] or ma["size_file_bytes"] > mb["size_file_bytes"]:
        return False
    return faster(a, b, min_gain) or ma["val_accuracy"] > mb["val_accuracy"] or ma["size_file_bytes"] < mb["size_file_bytes"]


def pareto(trials: list[Trial], min_gain: float = MIN_GAIN) -> list[Trial]:
    """Finished trials that no other finished trial dominates, fastest first."""
    done = [t for t in trials if t.finished]
    front = [t for t in done if not any(dominates(o, t, min_gain) for o in done if o is not t)]
    return sorted(front, key=lambda t: -t.metrics["speedup"])


@dataclass
class Rule:
    objective: str = "latency"
    max_drop_pts: float = math.inf  # validation points lost against the trial's own unpruned fp32 reference
    min_speedup: float = 0.0
    max_latency_ms: float = math.inf
    max_size_bytes: float = math.inf
    min_gain: float = MIN_GAIN  # faster needs a point speed-up more than 1 + min_gain times the other's

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is unknown; use one of {OBJECTIVES}")
        if not 0 <= self.min_gain < 1:
            raise ValueError(f"min_gain={self.min_gain} must be in [0, 1): it is a fraction, 0.05 for 5 %")

    def __str__(self) -> str:
        limits = [f"val_drop_pts <= {self.max_drop_pts:g}"] * (self.max_drop_pts < math.inf)
        limits += [f"speedup >= {self.min_speedup:g}"] * (self.min_speedup > 0)
        limits += [f"latency_p50_ms <= {self.max_latency_ms:g}"] * (self.max_latency_ms < math.inf)
        limits += [f"size_file_bytes <= {self.max_size_bytes:g}"] * (self.max_size_bytes < math.inf)
        head = "fastest (paired speed-up)" if self.objective == "latency" else "most accurate on the validation plates"
        return head + (f" with {' and '.join(limits)}" if limits else "") + (
            f"; faster means a 95 % interval wholly above the other's and a point speed-up more than "
            f"{100 * self.min_gain:g} % above it (min_gain={self.min_gain:g}); otherwise tied on speed, and ties go to "
            "validation accuracy (the pessimistic end of its drop interval, then the point), then file size, then nonzero bytes")

    def excess(self, t: Trial) -> dict[str, float]:
        """How far ``t`` is over each limit (<= 0 everywhere: admitted)."""
        m, out = t.metrics, {}
        if self.max_drop_pts < math.inf:
            out["val_drop_pts"] = m["val_drop_pts"] - self.max_drop_pts
        if self.min_speedup > 0:
            out["speedup"] = self.min_speedup - m["speedup"]
        if self.max_latency_ms < math.inf:
            out["latency_p50_ms"] = m.get("latency_p50_ms", math.inf) - self.max_latency_ms
        if self.max_size_bytes < math.inf:
            out["size_file_bytes"] = m["size_file_bytes"] - self.max_size_bytes
        return out

    def admits(self, t: Trial) -> bool:
        # The slack absorbs float noise: 100 * (0.90 - 0.89) is 1.0000000000000009, not 1.
        return t.finished and all(v <= 1e-9 for v in self.excess(t).values())


def best(trials: list[Trial], objective: str = "latency", min_gain: float = MIN_GAIN) -> Trial | None:
    """The tie rule over ``trials``: the fastest group (everything tied on speed with the point-fastest),
    then the tie order; with ``accuracy``, the most accurate group first, then the same. Trials flagged
    noisy take part only when every candidate is: then all are tied on speed and the tie order decides."""
    pool = list(trials)
    if not pool:
        return None
    if objective == "accuracy":
        top = max(t.metrics["val_accuracy"] for t in pool)
        pool = [t for t in pool if t.metrics["val_accuracy"] == top]
    pool = [t for t in pool if not t.noisy] or pool
    # Everything not beaten on speed by any other candidate: a trial slower than some other beyond
    # noise drops out; the survivors are tied on speed, and the tie order decides among them.
    unbeaten = [t for t in pool if not any(faster(o, t, min_gain) for o in pool)]
    choice = unbeaten[0]
    for t in unbeaten[1:]:
        if better(t, choice, by_speed=False):  # within the margin, a point speed-up is noise
            choice = t
    return choice


def select(trials: list[Trial], rule: Rule) -> Trial | None:
    return best([t for t in trials if rule.admits(t)], rule.objective, rule.min_gain)


def comparable_key(t: Trial) -> tuple[str, ...]:
    return tuple(t.params.get(k, "") for k in COMPARABLE_PARAMS)


def differs(t: Trial, key: tuple[str, ...]) -> str:
    """Why ``t`` is not comparable with trials measured under ``key`` ("" when it is)."""
    return "; ".join(f"{name.removeprefix('protocol.')} {have or 'not logged'!r} (sweep: {want or 'not logged'!r})"
                     for name, have, want in zip(COMPARABLE_PARAMS, comparable_key(t), key) if have != want)


def comparable(trials: list[Trial]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The sweep's key (what most of its trials were measured on; on a tie, the earliest listed trial's)
    and, for each trial that differs, why it is not comparable: {run id: reason}."""
    keys = [comparable_key(t) for t in trials]
    if not keys:
        return (), {}
    sweep = max(keys, key=lambda k: (keys.count(k), -keys.index(k)))
    return sweep, {t.run_id: differs(t, sweep) for t, k in zip(trials, keys) if k != sweep}


def finalists(trials: list[Trial], rule: Rule, incumbent: Trial | None = None, cap: int = FINALISTS) -> list[Trial]:
    """Who goes to the final, best first, at most ``cap``: the admitted trials no admitted trial beats
    beyond the margin (in tie order: the in-trial choice first), then the admitted Pareto front, and
    the incumbent champion (when admitted) in a place kept for it."""
    if cap < 1:
        raise ValueError(f"finalists={cap} must be >= 1")
    pool = [t for t in trials if rule.admits(t)]
    if rule.objective == "accuracy" and pool:
        top = max(t.metrics["val_accuracy"] for t in pool)
        contenders = [t for t in pool if t.metrics["val_accuracy"] == top]
    else:
        contenders = pool
    # Flagged trials are tied with every trial, so they stay in: the final re-times them cleanly.
    unbeaten = [t for t in contenders if not any(faster(o, t, rule.min_gain) for o in contenders)]
    ordered: list[Trial] = []
    while unbeaten:  # the tie rule's order: what `best` would pick, then what it would pick of the rest
        pick = best(unbeaten, rule.objective, rule.min_gain)
        ordered.append(pick)
        unbeaten.remove(pick)
    ordered += [t for t in pareto(pool, rule.min_gain) if t not in ordered]
    keep = cap > 1 and incumbent is not None and rule.admits(incumbent) and all(t.run_id != incumbent.run_id for t in ordered[:cap])
    return ordered[: cap - 1] + [incumbent] if keep else ordered[:cap]


def promotes(winner: Trial, incumbent: Trial, rule: Rule) -> tuple[bool, str]:
    """Whether ``winner`` takes the champion's place from ``incumbent`` (both with their final's speed-ups),
    and why: the incumbent fails the rule, or the winner is faster beyond the margin, or tied on speed and
    better by the tie order."""
    if winner.run_id == incumbent.run_id:
        return False, "the champion's own trial won again"
    if not rule.admits(incumbent):
        misses = ", ".join(f"{k} over by {v:.3g}" for k, v in rule.excess(incumbent).items() if v > 1e-9)
        return True, f"the incumbent fails the rule ({misses or 'its decision metrics are missing'})"
    mw, mi = winner.metrics["val_accuracy"], incumbent.metrics["val_accuracy"]
    if rule.objective == "accuracy" and mw != mi:
        return mw > mi, f"{'the challenger' if mw > mi else 'the incumbent'} is more accurate on the validation plates: " \
                        f"{max(mw, mi):.4f} against {min(mw, mi):.4f}"
    for first, second, won in ((winner, incumbent, True), (incumbent, winner, False)):
        if faster(first, second, rule.min_gain):
            return won, (f"{'the challenger' if won else 'the incumbent'} is faster beyond the margin: "
                         f"{first.speed[1]:.2f}x against {second.speed[1]:.2f}x")
    # Tied on speed: the tie order without its last step (the point speed-up, which is within the margin here).
    won = better(winner, incumbent, by_speed=False)
    return won, (f"{'the challenger' if won else 'the incumbent'} is tied on speed ({winner.speed[1]:.2f}x against "
                 f"{incumbent.speed[1]:.2f}x, within the margin) and " + ("better by the tie order (validation accuracy, then size)"
                                                                          if won else "the challenger is no better by the tie order"))


def closest(trials: list[Trial], rule: Rule) -> Trial | None:
    """The finished trial that misses the rule's limits by the least (largest relative excess)."""
    limits = {"val_drop_pts": rule.max_drop_pts, "speedup": rule.min_speedup, "latency_p50_ms": rule.max_latency_ms,
              "size_file_bytes": rule.max_size_bytes}

    def miss(t: Trial) -> float:
        return max((e / max(abs(limits[k]), 1e-9) for k, e in rule.excess(t).items()), default=0.0)

    done = [t for t in trials if t.finished]
    return min(done, key=lambda t: (miss(t), -t.metrics["speedup"])) if done else None
