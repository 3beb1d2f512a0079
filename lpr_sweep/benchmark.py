"""The one latency harness: every runtime and every benchmark script times through ``time_calls``."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from lpr_sweep import ConfigError
from lpr_sweep.data import Plates


@dataclass
class BenchmarkConfig:
    warmup: int = 20  # untimed calls first: allocators, thread pools and caches settle
    repeats: int = 200  # timed batch-1 calls
    throughput_batch: int = 32
    throughput_repeats: int = 20

    def __post_init__(self):
        for key in ("repeats", "throughput_batch", "throughput_repeats"):
            if getattr(self, key) < 1:
                raise ConfigError(f"benchmark.{key}={getattr(self, key)} must be >= 1")
        if self.warmup < 0:
            raise ConfigError(f"benchmark.warmup={self.warmup} must be >= 0")


def time_calls(fn: Callable[[np.ndarray], object], x: np.ndarray, warmup: int, repeats: int) -> np.ndarray:
    """Wall time of each of ``repeats`` calls, in ms, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn(x)
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter_ns()
        fn(x)
        times[i] = (time.perf_counter_ns() - t0) / 1e6
    return times


def summarize(times_ms: np.ndarray) -> dict[str, float]:
    return {
        "latency_p50_ms": float(np.percentile(times_ms, 50)),
        "latency_p90_ms": float(np.percentile(times_ms, 90)),
        "latency_mean_ms": float(times_ms.mean()),
    }


def inputs(plates: Plates, batch: int) -> np.ndarray:
    """Real plates, repeated when the scored set is smaller than the batch."""
    idx = np.arange(batch) % len(plates)
    return np.ascontiguousarray(plates.images[idx])


def run(fn: Callable[[np.ndarray], object], plates: Plates, cfg: BenchmarkConfig) -> dict[str, float]:
    metrics = summarize(time_calls(fn, inputs(plates, 1), cfg.warmup, cfg.repeats))
    big = time_calls(fn, inputs(plates, cfg.throughput_batch), min(cfg.warmup, 3), cfg.throughput_repeats)
    metrics["throughput_ips"] = cfg.throughput_batch / (float(np.median(big)) / 1e3)
    return metrics
