"""The one latency harness: every trial times its model paired with a fixed reference, in one process.

Timings on shared machines drift by ±50 % between processes and minutes (docs/measured.md,
"Runtimes"), so a trial's own p50 cannot be compared with another trial's. Instead each trial times
its deployable (B) interleaved with a reference (A: the unpruned fp32 model on ONNX Runtime with the
same threads and input) in blocks ordered A B, B A, A B, ... so that drift and step changes hit both
alike. Each block gives the ratio of the two medians; ``speedup`` summarises them (below), with a
95 % bootstrap interval over blocks. When the interval is wider than ``max_ci_width``
(relative to the speed-up), more blocks are measured, up to ``max_blocks``; a trial still too wide
is flagged ``bench_noisy=1``.

Pairing cannot remove what stays fixed for a whole load of a model: on the 2-core Xeon VM an
OpenVINO int8 model ran at either ~1.0 or ~1.4 ms for as long as it stayed loaded (one load in
four slow, at random; docs/measured.md, "One load is one draw"). So the candidate is loaded
``loads`` times, blocks rotate over the loads, and ``speedup`` is the mean over loads of each
load's median block ratio: what a user who loads the model once should expect. Its interval is
bootstrapped over the blocks within each load.
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
    max_blocks: int = 48  # the budget: blocks measured at most while the interval is too wide
    max_ci_width: float = 0.20  # (ci_high - ci_low) / speedup above this: measure more, then flag bench_noisy
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
        if self.warmup < 0 or self.max_ci_width <= 0:
            raise ConfigError("benchmark.warmup must be >= 0 and benchmark.max_ci_width > 0")

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


def interval(ratios: np.ndarray, loads: np.ndarray | None = None, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """(estimate, 2.5 %, 97.5 %): the mean over loads of each load's median block ratio (with one
    load: the median ratio), bootstrapped over the blocks within each load.

    The loads are kept, not resampled: with three of them a bootstrap over loads spans little more
    than their range and, on a noisy machine, flagged every trial (docs/measured.md). How far they
    disagree is logged beside it (``bench_load_spread``)."""
    rng = np.random.default_rng(seed)
    loads = np.zeros(len(ratios), int) if loads is None else np.asarray(loads)
    groups = [ratios[loads == g] for g in np.unique(loads)]
    # (loads, resamples): each load's median over its resampled blocks
    boot = np.stack([np.median(g[rng.integers(0, len(g), (resamples, len(g)))], axis=1) for g in groups])
    means = boot.mean(axis=0)
    estimate = float(np.mean([np.median(g) for g in groups]))
    return estimate, float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired(candidates: Callable[[np.ndarray], object] | Sequence[Callable[[np.ndarray], object]],
           reference: Callable[[np.ndarray], object], x: np.ndarray, cfg: BenchmarkConfig,
           clock: Clock = time.perf_counter_ns) -> dict[str, float]:
    """Speed-up of the candidate (one callable, or several loads of it) over ``reference`` with its
    interval; latencies of both."""
    loads = list(candidates) if isinstance(candidates, (list, tuple)) else [candidates]
    time_calls(reference, x, cfg.warmup, 0, clock)
    for load in loads:
        time_calls(load, x, cfg.warmup, 0, clock)
    ref, cand, which = [], [], []
    while True:
        for _ in range(cfg.blocks if not ref else min(cfg.blocks, cfg.max_blocks - len(ref))):
            k = len(ref) % len(loads)
            order = [(reference, ref), (loads[k], cand)]
            # A B for one round over the loads, then B A: every load sees both orders
            for fn, out in order if (len(ref) // len(loads)) % 2 == 0 else order[::-1]:
                out.append(time_calls(fn, x, 0, cfg.calls_per_block, clock))
            which.append(k)
        ratios = np.array([np.median(a) / np.median(b) for a, b in zip(ref, cand)])
        speedup, low, high = interval(ratios, np.array(which))
        wide = (high - low) / speedup > cfg.max_ci_width
        if not wide or len(ref) >= cfg.max_blocks:
            break
    ref_medians = np.array([np.median(a) for a in ref])
    p10, p50, p90 = np.percentile(ref_medians, [10, 50, 90])
    per_load = [float(np.median(ratios[np.array(which) == k])) for k in sorted(set(which))]
    return {
        "speedup": speedup, "speedup_ci_low": low, "speedup_ci_high": high,
        "latency_ref_p50_ms": float(np.percentile(np.concatenate(ref), 50)),
        **summarize(np.concatenate(cand)),
        "bench_blocks": len(ref), "bench_noise": float((p90 - p10) / p50), "bench_noisy": float(wide),
        # how far the loads disagree: (max - min) / mean of their median ratios
        "bench_load_spread": float((max(per_load) - min(per_load)) / np.mean(per_load)),
    }


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
        "protocol.bench_interval": "95 % bootstrap over blocks within each load, of the mean over loads of the median block ratio",
        "protocol.loadavg_1m": f"{os.getloadavg()[0]:.2f}",
    }


def run(loads: Sequence[Callable[[np.ndarray], object]], reference: Callable[[np.ndarray], object], plates: Plates,
        cfg: BenchmarkConfig) -> dict[str, float]:
    """Paired latency over ``loads`` (separate loads of one model), throughput of the first."""
    metrics = paired(loads, reference, inputs(plates, 1), cfg)
    big = time_calls(loads[0], inputs(plates, cfg.throughput_batch), min(cfg.warmup, 3), cfg.throughput_repeats)
    metrics["throughput_ips"] = cfg.throughput_batch / (float(np.median(big)) / 1e3)
    return metrics
