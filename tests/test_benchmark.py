import numpy as np
import pytest

from lpr_sweep import ConfigError, benchmark
from lpr_sweep.benchmark import BenchmarkConfig
from lpr_sweep.data import Plates


def test_time_calls_warms_up_then_times_each_call():
    calls = []
    times = benchmark.time_calls(lambda x: calls.append(len(x)), np.zeros((1, 3)), warmup=4, repeats=7)
    assert len(calls) == 11 and times.shape == (7,) and (times >= 0).all()


def test_summarize_uses_the_metric_vocabulary():
    stats = benchmark.summarize(np.arange(1, 101, dtype=float))
    assert stats == {"latency_p50_ms": 50.5, "latency_p90_ms": pytest.approx(90.1), "latency_mean_ms": 50.5}


def test_run_reports_latency_at_batch_one_and_throughput_at_the_stated_batch():
    seen = []
    plates = Plates(["a", "b"], ["京A", "京B"], np.zeros((2, 3, 24, 94), np.float32))
    metrics = benchmark.run(lambda x: seen.append(len(x)), plates, BenchmarkConfig(warmup=1, repeats=3, throughput_batch=5, throughput_repeats=2))
    assert set(metrics) == {"latency_p50_ms", "latency_p90_ms", "latency_mean_ms", "throughput_ips"}
    assert seen.count(1) == 4 and seen.count(5) == 3  # throughput warm-up is capped at 3 calls
    assert metrics["throughput_ips"] > 0


def test_bad_counts_are_refused():
    with pytest.raises(ConfigError, match="benchmark.repeats=0"):
        BenchmarkConfig(repeats=0)
    with pytest.raises(ConfigError, match="benchmark.warmup=-1"):
        BenchmarkConfig(warmup=-1)
