"""The one latency harness: every trial times its model paired with a fixed reference, in one process.

Timings on shared machines drift by ±50 % between processes and minutes (docs/measured.md,
"Runtimes"), so a trial's own p50 cannot be compared with another trial's. Instead each trial times
its deployable (B) interleaved with a reference (A: the unpruned fp32 model on ONNX Runtime with the
same threads and input) in blocks ordered A B, B A, A B, ... so that drift and step changes hit both
alike. Each block gives the ratio of the two medians; ``speedup`` summarises them (below), with a
95 % bootstrap interval over blocks. When the interval is wider than ``max_ci_width``
(relative to the speed-up), more blocks are measured, up to ``max_seconds`` or ``max_blocks``; a
trial still too wide is flagged ``bench_noisy=1``.

Pairing cannot remove what stays fixed for a whole load of a model: on the 2-core Xeon VM an
OpenVINO int8 model ran at either ~1.0 or ~1.4 ms for as long as it stayed loaded (one load in
four slow, at random; docs/measured.md, "One load is one draw"). So the candidate is loaded
``loads`` times, blocks rotate over the loads, and ``speedup`` is the mean over loads of each
load's median block ratio: what a user who loads the model once should expect. Its interval is
bootstrapped over the blocks within each load.

Pairing cannot remove either what the host does to the two models unequally for a moment. On the
2-core AMD EPYC VM, a 7-minute run of paired blocks (ORT fp32 reference against structured 0.9 NNCF
int8 on OpenVINO) held a ratio of 1.45x, except in 23 spells of 0.5-3.5 s (5 % of the time) in
which the dense fp32 reference slowed by half and the small int8 model by a fifth: 1.65x-1.83x
(docs/measured.md, "Slow spells"). A measurement of one second can sit inside a spell; the trial
that followed that run did, and reported 1.69x. So the blocks go on for at least ``min_seconds``
(10 s by default: one-second windows of that run ranged 1.34x-1.81x, ten-second windows
1.41x-1.57x), and the bootstrap resamples runs of consecutive blocks of about a second each, since
blocks within one spell are not independent.

Pairing cannot remove either another process taking turns on the trial's cores. With a busy loop on
one of the EPYC's two cores, the same dense model paired with itself gave 0.92x [0.82, 1.00] and
1.07x [1.01, 1.17] in back-to-back ten-second measurements: the scheduler's turns favour one model or
the other for seconds at a time, and the interval, which covers 1.00 on a quiet host, misses it in
three measurements of eight (docs/measured.md, "A busy core"). So the blocks also measure how much CPU
other processes took on this process's cores (``bench_other_cores``); above the cores the trial
leaves free plus ``max_other_cores``, the host was busy (``bench_host_busy``) and the trial is flagged
``bench_noisy`` whatever its interval says.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from lpr_sweep import ConfigError
from lpr_sweep.data import Plates

Clock = Callable[[], int]  # nanoseconds


@dataclass
class BenchmarkConfig:
    warmup: int = 20  # untimed calls of each model first: allocators, thread pools and caches settle
    blocks: int = 12  # paired blocks measured at least (rotating over the loads)
    calls_per_block: int = 20  # timed batch-1 calls of each model per block
    min_seconds: float = 10.0  # blocks go on for at least this long: the host's slow spells last seconds
    max_seconds: float = 30.0  # the budget: seconds measured at most while the interval is too wide ...
    max_blocks: int = 2000  # ... and blocks at most (a hard cap, whatever the seconds)
    max_ci_width: float = 0.20  # (ci_high - ci_low) / speedup above this: measure more, then flag bench_noisy
    max_other_cores: float = 0.2  # other processes' CPU on this trial's cores above this: host busy, flag bench_noisy
    loads: int = 3  # separate loads of the candidate that the blocks rotate over
    reference: str = "auto"  # the reference's runtime; auto = onnxruntime on cpu, torch on cuda
    throughput_batch: int = 32
    throughput_repeats: int = 20

    def __post_init__(self):
        for key in ("calls_per_block", "loads", "throughput_batch", "throughput_repeats"):
            if getattr(self, key) < 1:
                raise ConfigError(f"benchmark.{key}={getattr(self, key)} must be >= 1")
        if self.blocks < 2 or self.max_blocks < self.blocks:
            raise ConfigError(f"benchmark.blocks={self.blocks} must be >= 2 and <= benchmark.max_blocks={self.max_blocks}")
        if self.loads > self.blocks:
            raise ConfigError(f"benchmark.loads={self.loads} is more than benchmark.blocks={self.blocks}: some loads would "
                              "never be timed; raise benchmark.blocks or lower benchmark.loads")
        if not 0 <= self.min_seconds <= self.max_seconds:
            raise ConfigError(f"benchmark.min_seconds={self.min_seconds} must be >= 0 and <= benchmark.max_seconds={self.max_seconds}")
        for key in ("warmup", "max_other_cores"):
            if getattr(self, key) < 0:
                raise ConfigError(f"benchmark.{key}={getattr(self, key)} must be >= 0")
        if self.max_ci_width <= 0:
            raise ConfigError(f"benchmark.max_ci_width={self.max_ci_width} must be > 0")

    def reference_runtime(self, device: str) -> str:
        # This install's ONNX Runtime has no CUDA provider, so a GPU trial's reference runs in torch.
        if self.reference != "auto":
            return self.reference
        return "onnxruntime" if device == "cpu" else "torch"


def time_calls(fn: Callable[[np.ndarray], object], x: np.ndarray, warmup: int, repeats: int,
               clock: Clock = time.perf_counter_ns) -> np.ndarray:
    """Wall time of each of ``repeats`` calls, in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn(x)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = clock()
        fn(x)
        times[i] = (clock() - t0) / 1e6
    return times


def summarize(times_ms: np.ndarray) -> dict[str, float]:
    return {
        "latency_p50_ms": float(np.percentile(times_ms, 50)),
        "latency_p90_ms": float(np.percentile(times_ms, 90)),
        "latency_mean_ms": float(times_ms.mean()),
    }


Host = Callable[[], "tuple[float, float, float] | None"]


def host_cpu() -> tuple[float, float, float] | None:
    """(seconds the cores this process may run on were busy, CPU seconds this process used, wall seconds),
    from /proc/stat; None where there is none (not Linux). Steal counts as busy: the hypervisor ran
    someone else while this process waited."""
    try:
        with open("/proc/stat") as f:
            lines = f.readlines()
    except OSError:
        return None
    cpus, busy = os.sched_getaffinity(0), 0
    for line in lines:
        name, *ticks = line.split()
        if name[3:].isdigit() and name.startswith("cpu") and int(name[3:]) in cpus:
            t = [int(v) for v in ticks[:8]]  # user nice system idle iowait irq softirq steal
            busy += sum(t) - t[3] - t[4]
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.monotonic()


def other_cores(before: tuple[float, float, float] | None, after: tuple[float, float, float] | None) -> float | None:
    """Mean CPU other processes used on this process's cores between two ``host_cpu`` readings, in cores."""
    if before is None or after is None or after[2] <= before[2]:
        return None
    return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / (after[2] - before[2]))


MIN_RUNS = 10  # runs of blocks per load that the bootstrap resamples, at least (fewer blocks: one each)


def interval(ratios: np.ndarray, loads: np.ndarray | None = None, seconds: float = 0.0, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """(estimate, 2.5 %, 97.5 %): the mean over loads of each load's median block ratio (with one
    load: the median ratio), bootstrapped over the blocks within each load.

    Over a measurement of ``seconds``, the bootstrap resamples runs of consecutive blocks, not single
    blocks: each load's blocks (in the order measured) are cut into ``max(MIN_RUNS, seconds)`` runs,
    about one second each, since the host's slow spells make neighbouring blocks alike. With no more
    blocks than that, or ``seconds`` unknown (0), each run is one block.

    The loads are kept, not resampled: with three of them a bootstrap over loads spans little more
    than their range and, on a noisy machine, flagged every trial (docs/measured.md). How far they
    disagree is logged beside it (``bench_load_spread``)."""
    rng = np.random.default_rng(seed)
    loads = np.zeros(len(ratios), int) if loads is None else np.asarray(loads)
    groups = [ratios[loads == g] for g in np.unique(loads)]
    boot = []  # (loads, resamples): each load's median over its resampled runs of blocks
    for g in groups:
        runs = np.array_split(g, min(len(g), max(MIN_RUNS, round(seconds))) if seconds > 0 else len(g))
        padded = np.full((len(runs), max(map(len, runs))), np.nan)  # runs differ by a block at most
        for i, run_ in enumerate(runs):
            padded[i, :len(run_)] = run_
        picked = padded[rng.integers(0, len(runs), (resamples, len(runs)))].reshape(resamples, -1)
        boot.append(np.nanmedian(picked, axis=1))
    means = np.mean(boot, axis=0)
    estimate = float(np.mean([np.median(g) for g in groups]))
    return estimate, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


Fn = Callable[[np.ndarray], object]


def paired(candidates: Fn | Sequence[Fn], reference: Fn, x: np.ndarray, cfg: BenchmarkConfig,
           clock: Clock = time.perf_counter_ns, host: Host | None = None, spare_cores: float = 0.0) -> dict[str, float]:
    """Speed-up of the candidate (one callable, or several loads of it) over ``reference`` with its
    interval; latencies of both. With ``host`` (``host_cpu``), also the CPU other processes took
    meanwhile: more than ``spare_cores`` (the cores the trial's threads leave free) plus
    ``cfg.max_other_cores`` flags the trial."""
    loads = list(candidates) if isinstance(candidates, (list, tuple)) else [candidates]
    return rotating([loads], reference, x, cfg, clock, host, spare_cores)[0]


def rotating(models: Sequence[Sequence[Fn]], reference: Fn, x: np.ndarray, cfg: BenchmarkConfig,
             clock: Clock = time.perf_counter_ns, host: Host | None = None, spare_cores: float = 0.0) -> list[dict[str, float]]:
    """``paired`` for several models at once (each a list of loads), timed in one process: every block
    times the reference and each model once, each against the reference beside it, so a host-speed
    step hits all of them alike and their ratios compare directly. The order within a block rotates
    a step every round over the loads, so every model sees every position; with one model that is
    A B for a round, then B A. One model's metrics per model, in order; the whole measurement goes
    on while any model's interval is too wide (within the budget)."""
    loads = [list(m) for m in models]
    n_loads = max(len(m) for m in loads)
    time_calls(reference, x, cfg.warmup, 0, clock)
    for model in loads:
        for load in model:
            time_calls(load, x, cfg.warmup, 0, clock)
    ref: list[np.ndarray] = []
    cand: list[list[np.ndarray]] = [[] for _ in loads]
    which: list[int] = []
    round_ = n_loads * (len(loads) + 1)  # blocks for every load to see every position once

    def block() -> None:
        k = len(ref) % n_loads
        order = [(reference, ref)] + [(m[k % len(m)], out) for m, out in zip(loads, cand)]
        shift = (len(ref) // n_loads) % len(order)
        for fn, out in order[shift:] + order[:shift]:
            out.append(time_calls(fn, x, 0, cfg.calls_per_block, clock))
        which.append(k)

    t0, before = clock(), host and host()

    def seconds() -> float:
        return (clock() - t0) / 1e9

    def estimates() -> list[tuple[np.ndarray, tuple[float, float, float], bool]]:
        out = []
        for model, times in zip(loads, cand):
            ratios = np.array([np.median(a) / np.median(b) for a, b in zip(ref, times)])
            est = interval(ratios, np.array(which) % len(model), seconds())
            out.append((ratios, est, (est[2] - est[1]) / est[0] > cfg.max_ci_width))
        return out

    # At least `blocks`, for at least `min_seconds`, ending on a whole round (capped by max_blocks).
    while len(ref) < cfg.max_blocks and (len(ref) < cfg.blocks or seconds() < cfg.min_seconds or len(ref) % round_):
        block()
    while True:
        results = estimates()
        if not any(wide for *_, wide in results) or len(ref) >= cfg.max_blocks or seconds() >= cfg.max_seconds:
            break
        for _ in range(min(cfg.blocks, cfg.max_blocks - len(ref))):
            block()
    others = other_cores(before, host and host())
    busy = others is not None and others > spare_cores + cfg.max_other_cores
    ref_medians = np.array([np.median(a) for a in ref])
    p10, p50, p90 = np.percentile(ref_medians, [10, 50, 90])
    shared = {"latency_ref_p50_ms": float(np.percentile(np.concatenate(ref), 50)), "bench_blocks": len(ref),
              "bench_seconds": seconds(), "bench_noise": float((p90 - p10) / p50),
              **({} if others is None else {"bench_other_cores": others, "bench_host_busy": float(busy)})}
    out = []
    for model, times, (ratios, (speedup, low, high), wide) in zip(loads, cand, results):
        load_of = np.array(which) % len(model)
        per_load = [float(np.median(ratios[load_of == k])) for k in sorted(set(load_of))]
        out.append({
            "speedup": speedup, "speedup_ci_low": low, "speedup_ci_high": high, **shared, **summarize(np.concatenate(times)),
            "bench_noisy": float(wide or busy),
            # how far the loads disagree: (max - min) / mean of their median ratios
            "bench_load_spread": float((max(per_load) - min(per_load)) / np.mean(per_load)),
        })
    return out


def inputs(plates: Plates, batch: int) -> np.ndarray:
    """Real plates, repeated when the set is smaller than the batch."""
    idx = np.arange(batch) % len(plates)
    return np.ascontiguousarray(plates.images[idx])


def protocol(cfg: BenchmarkConfig, reference: str) -> dict[str, str]:
    """The params that say how this trial's speed was measured."""
    return {
        "protocol.latency_batch": "1",
        "protocol.latency_input": "first scored plate, the same for both",
        "protocol.bench_reference": reference,
        "protocol.bench_order": "blocks alternate A B / B A (A = reference, B = this trial), rotating over B's loads",
        "protocol.bench_loads": str(cfg.loads),
        "protocol.bench_calls_per_block": str(cfg.calls_per_block),
        "protocol.bench_blocks_min_max": f"{cfg.blocks}-{cfg.max_blocks}",
        "protocol.bench_seconds_min_max": f"{cfg.min_seconds:g}-{cfg.max_seconds:g}",
        "protocol.bench_interval": "95 % bootstrap, within each load, over runs of consecutive blocks (about 1 s each), "
                                   "of the mean over loads of the median block ratio",
        "protocol.bench_host_busy": f"flagged bench_noisy when other processes used more than the cores this trial's threads "
                                    f"leave free + {cfg.max_other_cores:g} cores of this process's cores while it was timed",
    }


def run(loads: Sequence[Callable[[np.ndarray], object]], reference: Callable[[np.ndarray], object], plates: Plates,
        cfg: BenchmarkConfig, threads: int, host: Host = host_cpu) -> dict[str, float]:
    """Paired latency over ``loads`` (separate loads of one model) on ``threads`` threads, throughput of the first."""
    spare = max(0, len(os.sched_getaffinity(0)) - threads)
    load = os.getloadavg()[0]  # a reading of the machine, so a metric (a param would be charted as a setting)
    metrics = paired(loads, reference, inputs(plates, 1), cfg, host=host, spare_cores=spare)
    big = time_calls(loads[0], inputs(plates, cfg.throughput_batch), min(cfg.warmup, 3), cfg.throughput_repeats)
    metrics["throughput_ips"] = cfg.throughput_batch / (float(np.median(big)) / 1e3)
    metrics["host_loadavg_1m"] = load
    return metrics
