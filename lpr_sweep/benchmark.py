"""The one latency harness: every trial times its model paired with a fixed reference, in one process.

Timings on shared machines drift by ±50 % between processes and minutes (docs/measured.md,
"Runtimes"), so a trial's own p50 cannot be compared with another trial's. Instead each trial times
its deployable (B) interleaved with a reference (A: the unpruned fp32 model on ONNX Runtime with the
same threads and input) in blocks ordered A B, B A, A B, ... so that drift and step changes hit both
alike. Each block gives the ratio of the two medians; ``speedup`` is the median ratio over blocks,
with a 95 % bootstrap interval over blocks. When the interval is wider than ``max_ci_width``
(relative to the speed-up), more blocks are measured, up to ``max_blocks``; a trial still too wide
is flagged ``bench_noisy=1``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lpr_sweep import ConfigError
from lpr_sweep.data import Plates

Clock = Callable[[], int]  # nanoseconds


@dataclass
class BenchmarkConfig:
    warmup: int = 20  # untimed calls of each model first: allocators, thread pools and caches settle
    blocks: int = 10  # paired blocks measured at least
    calls_per_block: int = 20  # timed batch-1 calls of each model per block
    max_blocks: int = 40  # the budget: blocks measured at most while the interval is too wide
    max_ci_width: float = 0.20  # (ci_high - ci_low) / speedup above this: measure more, then flag bench_noisy
    reference: str = "auto"  # the reference's runtime; auto = onnxruntime on cpu, torch on cuda
    throughput_batch: int = 32
    throughput_repeats: int = 20

    def __post_init__(self):
        for key in ("calls_per_block", "throughput_batch", "throughput_repeats"):
            if getattr(self, key) < 1:
                raise ConfigError(f"benchmark.{key}={getattr(self, key)} must be >= 1")
        if self.blocks < 2 or self.max_blocks < self.blocks:
            raise ConfigError(f"benchmark.blocks={self.blocks} must be >= 2 and <= benchmark.max_blocks={self.max_blocks}")
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


def interval(ratios: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(median, 2.5 %, 97.5 %) of the median ratio, bootstrapped over blocks."""
    rng = np.random.default_rng(seed)
    boot = np.median(ratios[rng.integers(0, len(ratios), (resamples, len(ratios)))], axis=1)
    return float(np.median(ratios)), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def paired(candidate: Callable[[np.ndarray], object], reference: Callable[[np.ndarray], object], x: np.ndarray,
           cfg: BenchmarkConfig, clock: Clock = time.perf_counter_ns) -> dict[str, float]:
    """Speed-up of ``candidate`` over ``reference`` with its interval; latencies of both."""
    time_calls(reference, x, cfg.warmup, 0, clock)
    time_calls(candidate, x, cfg.warmup, 0, clock)
    ref, cand = [], []
    while True:
        for _ in range(cfg.blocks if not ref else min(cfg.blocks, cfg.max_blocks - len(ref))):
            order = [(reference, ref), (candidate, cand)]
            for fn, out in order if len(ref) % 2 == 0 else order[::-1]:  # A B, then B A
                out.append(time_calls(fn, x, 0, cfg.calls_per_block, clock))
        ratios = np.array([np.median(a) / np.median(b) for a, b in zip(ref, cand)])
        speedup, low, high = interval(ratios)
        wide = (high - low) / speedup > cfg.max_ci_width
        if not wide or len(ref) >= cfg.max_blocks:
            break
    ref_medians = np.array([np.median(a) for a in ref])
    p10, p50, p90 = np.percentile(ref_medians, [10, 50, 90])
    return {
        "speedup": speedup, "speedup_ci_low": low, "speedup_ci_high": high,
        "latency_ref_p50_ms": float(np.percentile(np.concatenate(ref), 50)),
        **summarize(np.concatenate(cand)),
        "bench_blocks": len(ref), "bench_noise": float((p90 - p10) / p50), "bench_noisy": float(wide),
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
        "protocol.bench_order": "blocks alternate A B / B A (A = reference, B = this trial)",
        "protocol.bench_calls_per_block": str(cfg.calls_per_block),
        "protocol.bench_blocks_min_max": f"{cfg.blocks}-{cfg.max_blocks}",
        "protocol.bench_interval": "95 % bootstrap over blocks of the median per-block ratio",
        "protocol.loadavg_1m": f"{os.getloadavg()[0]:.2f}",
    }


def run(fn: Callable[[np.ndarray], object], reference: Callable[[np.ndarray], object], plates: Plates,
        cfg: BenchmarkConfig) -> dict[str, float]:
    metrics = paired(fn, reference, inputs(plates, 1), cfg)
    big = time_calls(fn, inputs(plates, cfg.throughput_batch), min(cfg.warmup, 3), cfg.throughput_repeats)
    metrics["throughput_ips"] = cfg.throughput_batch / (float(np.median(big)) / 1e3)
    return metrics
