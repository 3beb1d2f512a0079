"""Choosing among a sweep's trials: the tie rule, the Pareto front, the champion rule. No I/O.

What decides, and why:
- **Speed** is each trial's paired ``speedup`` against the same reference model, timed interleaved
  in the trial's own process (``benchmark.paired``), with its 95 % interval. One trial is faster
  than another only when their intervals do not overlap; otherwise they are tied on speed.
  Latencies of trials timed apart drift too much to rank (docs/measured.md, "Runtimes").
  A trial flagged ``bench_noisy`` (its interval stayed too wide, or other processes took its cores
  while it was timed: either way its interval is not to be trusted) is tied on speed with every
  trial, and the champion comes from the trials not flagged whenever one is admitted.
  The host itself runs faster or slower for minutes at a time, and paired ratios move with it:
  when two trials' references ran more than ``HOST_SHIFT`` apart, one is faster only when its
  interval lies more than ``HOST_MARGIN`` above the other's.
- **Accuracy** for decisions is ``val_accuracy``, on the validation plates; the scored plates only
  report. A trial without validation plates (``data.val_size=0``) cannot take part in a decision.
- Within noise, ties go to accuracy (judged by the upper end of the validation drop's interval, so a
  model proven identical to the reference beats one that matched it by luck), then to size
  (``size_file_bytes``, then ``size_nonzero_bytes``), then to the point speed-up.

``report`` reads trials from MLflow and renders; this module is tested on synthetic trials.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

OBJECTIVES = ("latency", "accuracy")  # latency: fastest within the limits; accuracy: most accurate within them
# On the AVX2 EPYC VM the unpruned reference ran at about 2.1 ms or about 2.65 ms p50 for minutes at
# a time, and the same int8 model's paired speed-up moved up to 12 % with it (2.35x against 2.62x;
# README, "Pools that slice"): a gap that size between trials timed at different host speeds is the host's.
HOST_SHIFT = 0.10  # reference p50s of two trials further apart than this (relative) ...
HOST_MARGIN = 0.15  # ... rank on speed only when one's interval clears the other's by this much
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
        """FINISHED with every metric a decision reads."""
        return self.status == "FINISHED" and all(k in self.metrics for k in DECISION_KEYS)

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


def faster(a: Trial, b: Trial) -> bool:
    """``a`` is faster than ``b`` beyond noise: neither is flagged, and ``a``'s interval lies wholly above
    ``b``'s, by ``HOST_MARGIN`` when their references ran more than ``HOST_SHIFT`` apart."""
    margin = 1 + HOST_MARGIN if host_shift(a, b) > HOST_SHIFT else 1.0
    return not a.noisy and not b.noisy and a.speed[0] > b.speed[2] * margin


def tied_on_speed(a: Trial, b: Trial) -> bool:
    return not faster(a, b) and not faster(b, a)


def better(a: Trial, b: Trial) -> bool:
    """The tie rule's order between two trials tied on speed: accuracy, judged by the pessimistic end of
    its interval (the upper bound of the validation drop against the reference), then the point
    accuracy, then size (the files, then their nonzero bytes, which is what compression keeps), then
    the point speed-up. Judged pessimistically, a model that predicts exactly as the reference does
    beats one that scored as well on 200 plates by gaining some and losing others."""

    def key(t: Trial) -> tuple[float, ...]:
        m = t.metrics
        return (-m.get("val_drop_pts_ci_high", m["val_drop_pts"]), m["val_accuracy"], -m["size_file_bytes"],
                -m.get("size_nonzero_bytes", 0), m["speedup"])

    return key(a) > key(b)


def dominates(a: Trial, b: Trial) -> bool:
    """``a`` is no slower (beyond noise), no less accurate and no larger than ``b``, and better somewhere."""
    if faster(b, a):
        return False
    ma, mb = a.metrics, b.metrics
    if ma["val_accuracy"] < mb["val_accuracy"] or ma["size_file_bytes"] > mb["size_file_bytes"]:
        return False
    return faster(a, b) or ma["val_accuracy"] > mb["val_accuracy"] or ma["size_file_bytes"] < mb["size_file_bytes"]


def pareto(trials: list[Trial]) -> list[Trial]:
    """Finished trials that no other finished trial dominates, fastest first."""
    done = [t for t in trials if t.finished]
    front = [t for t in done if not any(dominates(o, t) for o in done if o is not t)]
    return sorted(front, key=lambda t: -t.metrics["speedup"])


@dataclass
class Rule:
    objective: str = "latency"
    max_drop_pts: float = math.inf  # validation points lost against the trial's own unpruned fp32 reference
    min_speedup: float = 0.0
    max_latency_ms: float = math.inf
    max_size_bytes: float = math.inf

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is unknown; use one of {OBJECTIVES}")

    def __str__(self) -> str:
        limits = [f"val_drop_pts <= {self.max_drop_pts:g}"] * (self.max_drop_pts < math.inf)
        limits += [f"speedup >= {self.min_speedup:g}"] * (self.min_speedup > 0)
        limits += [f"latency_p50_ms <= {self.max_latency_ms:g}"] * (self.max_latency_ms < math.inf)
        limits += [f"size_file_bytes <= {self.max_size_bytes:g}"] * (self.max_size_bytes < math.inf)
        head = "fastest (paired speed-up)" if self.objective == "latency" else "most accurate on the validation plates"
        return head + (f" with {' and '.join(limits)}" if limits else "") + (
            "; within speed noise (overlapping 95 % intervals), ties go to validation accuracy, then file size")

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


def best(trials: list[Trial], objective: str = "latency") -> Trial | None:
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
    unbeaten = [t for t in pool if not any(faster(o, t) for o in pool)]
    choice = unbeaten[0]
    for t in unbeaten[1:]:
        if better(t, choice):
            choice = t
    return choice


def select(trials: list[Trial], rule: Rule) -> Trial | None:
    return best([t for t in trials if rule.admits(t)], rule.objective)


def closest(trials: list[Trial], rule: Rule) -> Trial | None:
    """The finished trial that misses the rule's limits by the least (largest relative excess)."""
    limits = {"val_drop_pts": rule.max_drop_pts, "speedup": rule.min_speedup, "latency_p50_ms": rule.max_latency_ms,
              "size_file_bytes": rule.max_size_bytes}

    def miss(t: Trial) -> float:
        return max((e / max(abs(limits[k]), 1e-9) for k, e in rule.excess(t).items()), default=0.0)

    done = [t for t in trials if t.finished]
    return min(done, key=lambda t: (miss(t), -t.metrics["speedup"])) if done else None
